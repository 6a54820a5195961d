"""creditgym.wrappers: the reward wrappers and learned reward models. Each adds its own channel to
`info["reward_components"]`, so that the channels always sum to the reward (`channels.with_channel`)."""
