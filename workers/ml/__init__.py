"""Torch and numpy code for hitl's models: no Django, no hitl imports.

Everything here runs with torch, torchvision and numpy alone (plus safetensors and Pillow),
so it can be copied to a GPU machine that has no Django installed.
"""
