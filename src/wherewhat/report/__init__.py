"""wherewhat.report"""
