"""sr-plugin with other libraries and diffusers features the user may have turned on: cache-dit, caches enabled by
hand on the large model, context parallelism (diffusers and para-attn), model CPU offload and the large model's
offload after the switch."""
