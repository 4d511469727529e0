"""wherewhat.data"""
