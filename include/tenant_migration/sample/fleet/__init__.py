"""A simulated device and app fleet for one tenant, writing through the tenant's DNS records."""
