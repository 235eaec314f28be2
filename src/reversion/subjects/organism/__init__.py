"""subjects/organism"""
