"""The audience engine: profiles, events, segment rules compiled to SQL, and always-current memberships."""
