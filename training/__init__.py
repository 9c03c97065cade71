"""Offline training and evaluation for agegender_ros: dataset adapters, preprocessing cache, protocols, trainer."""
