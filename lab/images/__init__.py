"""Images: building a target's box for a package set, and the content-addressed box cache."""
