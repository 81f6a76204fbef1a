"""Layer 1, the pure core: numpy and OpenCV only (no torch, no rclpy).

Command parsing, image normalisation, frame pairing, depth geometry and the overlay
picture. Every other layer may import this one; it imports none of them.
"""
