"""eventsource"""
