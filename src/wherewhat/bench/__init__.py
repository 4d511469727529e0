"""wherewhat.bench"""
