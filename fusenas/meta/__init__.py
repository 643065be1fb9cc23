"""fusenas.meta"""
