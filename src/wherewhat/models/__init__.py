"""wherewhat.models"""
