"""What every transport shares: the hub, resumption tokens, the throttle and the listener layer."""
