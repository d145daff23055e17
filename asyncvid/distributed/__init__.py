"""Process groups, launch environments and the point-to-point transport."""
