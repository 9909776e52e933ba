"""The upper-platform side: registration to each upper, answers, forwarding, NOTIFYs."""
