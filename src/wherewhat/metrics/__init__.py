"""wherewhat.metrics"""
