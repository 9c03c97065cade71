"""`ros2 topic echo`'s YAML layout for ROS 2 messages, without ROS: the demo's fallback printer.

    from agegender_ros.ros_echo import message_to_yaml
    print(message_to_yaml(msg)); print("---")

Works on any message object with `get_fields_and_field_types()` (what rosidl generates for rclpy), so this
module imports neither rclpy nor message packages. Python 3.8 compatible.
"""
from __future__ import annotations

import array

import numpy as np


def message_to_yaml(msg, indent: int = 0) -> str:
    """A message as `ros2 topic echo` prints it: block YAML, fields in definition order, and floats as Python prints
    them (a float32 field as its exact double value, 0.10000000149011612 for 0.1, as the real echo does)."""
    lines: list = []
    _yaml_fields(msg, indent, lines)
    return "\n".join(lines)


def _yaml_scalar(value, ros_type: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (bytes, bytearray)):
        return '"' + "".join(f"\\x{b:02x}" for b in value) + '"'
    if isinstance(value, str):
        try:
            float(value)
            number_like = True
        except ValueError:
            number_like = False
        needs_quotes = value == "" or number_like or value.strip() != value \
            or any(c in value for c in ":#{}[],&*?|<>=!%@`'\"") \
            or value.lower() in ("true", "false", "null", "yes", "no", "~", "on", "off")
        return "'" + value.replace("'", "''") + "'" if needs_quotes else value
    return str(value)


def _yaml_fields(msg, indent: int, lines: list, first_prefix: str | None = None) -> None:
    pad = " " * indent
    for index, (name, ros_type) in enumerate(msg.get_fields_and_field_types().items()):
        prefix = first_prefix if (first_prefix is not None and index == 0) else pad
        value = getattr(msg, name)
        if hasattr(value, "get_fields_and_field_types"):
            lines.append(f"{prefix}{name}:")
            _yaml_fields(value, indent + 2, lines)
        elif isinstance(value, (list, tuple, array.array, np.ndarray)):
            items = list(value)
            if not items:
                lines.append(f"{prefix}{name}: []")
            elif hasattr(items[0], "get_fields_and_field_types"):
                lines.append(f"{prefix}{name}:")
                for item in items:
                    _yaml_fields(item, indent + 2, lines, first_prefix=pad + "- ")
            else:
                lines.append(f"{prefix}{name}:")
                element_type = ros_type.split("<", 1)[-1].rstrip(">").split("[")[0]
                lines.extend(f"{pad}- {_yaml_scalar(v, element_type)}" for v in items)
        else:
            lines.append(f"{prefix}{name}: {_yaml_scalar(value, ros_type)}")
