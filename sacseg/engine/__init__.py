"""Training and evaluation machinery: metrics, inference, exports."""
