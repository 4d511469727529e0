"""worldcomp2d"""
