"""The one or two lines a language model reads about an IssState."""

from __future__ import annotations

from services.iss.state import IssState


def describe_state(state: IssState) -> str:
    """Position, units, the UTC time it describes, its source and accuracy."""
    lat = f"{abs(state.latitude):.2f}°{'N' if state.latitude >= 0 else 'S'}"
    lon = f"{abs(state.longitude):.2f}°{'E' if state.longitude >= 0 else 'W'}"
    parts = [f"At {state.at.strftime('%Y-%m-%d %H:%M:%S')} UTC the ISS is at {lat}, {lon}"]
    if state.over:
        parts[0] += f", over {state.over}"
    if state.altitude_km is not None:
        parts.append(f"altitude {state.altitude_km:.0f} km")
    if state.speed_kmh is not None:
        parts.append(f"speed {state.speed_kmh:,.0f} km/h")
    text = ", ".join(parts) + "."
    return f"{text} Source: {state.source}; {state.accuracy}."
