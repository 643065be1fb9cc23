"""fusenas.wal"""
