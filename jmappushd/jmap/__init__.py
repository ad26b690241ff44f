"""jmap"""
