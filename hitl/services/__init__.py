"""Writes and decisions. Keyword-only, typed, atomic; named <entity>_<action>."""
