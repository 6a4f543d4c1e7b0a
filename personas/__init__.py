"""The built-in personas, shipped inside the package as `guppyforge.personas`."""
