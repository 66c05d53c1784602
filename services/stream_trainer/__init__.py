"""The stream trainer: a Kafka consumer-group service keeping one online detector per device.

Run it with ``flead trainer run`` or ``python -m services.stream_trainer``. docs/streaming.md describes
the keyed state, the checkpoint protocol (MongoDB first, then Kafka), watermarks, the dead-letter and
late side outputs, federation and scaling.

A reading's way through: `service.StreamTrainer` polls a micro-batch -> `intake.PollIntake` decodes,
splits late readings (`watermarks`) and groups by device -> each `slot.DeviceSlot` buffers them
(`pending`) and scores whole chunks -> `outputs.Outputs` writes anomalies -> `checkpoints` persists.
"""
