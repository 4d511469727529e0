"""ssdir"""
