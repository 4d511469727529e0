"""wherewhat.tasks"""
