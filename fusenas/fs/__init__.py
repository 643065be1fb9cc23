"""fusenas.fs"""
