"""One router per route family; `service.api.create_app` mounts them all."""
