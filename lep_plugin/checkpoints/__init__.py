"""Model checkpoints read tensor by tensor (safetensors, ``.bin``, DeepSpeed ZeRO), written shard by shard, and
what their configs say."""
