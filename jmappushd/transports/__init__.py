"""The push channels, one service each: EventSource, JMAP over WebSocket, Web Push."""
