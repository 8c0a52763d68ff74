"""Simulated task scenes (own MJCF scenes and robosuite-backed ones), reward terms,
scripted experts, cameras and gymnasium wrappers."""
