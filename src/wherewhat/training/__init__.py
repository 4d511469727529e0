"""wherewhat.training"""
