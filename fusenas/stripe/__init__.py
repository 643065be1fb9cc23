"""fusenas.stripe"""
