"""The stream trainer: a Kafka consumer-group service keeping one online detector per device.

Run it with ``flead trainer run`` or ``python -m services.stream_trainer``. docs/streaming.md describes
the keyed state, the checkpoint protocol (MongoDB first, then Kafka), watermarks, the dead-letter and
late side outputs, federation and scaling.

A reading's way through: `service.StreamTrainer` polls a micro-batch -> `intake.take_in` decodes it,
splits off late readings (`intake.Watermarks`) and groups by device -> each `devices.DeviceSlot`
buffers them and scores whole chunks (`flead.model`) -> the sinks of `outputs.Outputs` -> at a
checkpoint the sinks are flushed and `checkpoints` persists device states and offsets.
"""
