"""subjects/checkpoints"""
