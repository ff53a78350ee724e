"""Current weather for a city from Open-Meteo (free, no API key): geocoding, then the forecast API.

``make_weather_tool(transport=...)`` takes an ``httpx`` transport, so tests can answer
with ``httpx.MockTransport`` instead of the network.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import httpx

from glm_agent import Tool, tool

__all__ = ["get_weather", "make_weather_tool", "GEOCODING_URL", "FORECAST_URL"]

GEOCODING_URL = "https://geocoding-api.open-meteo.com/v1/search"
FORECAST_URL = "https://api.open-meteo.com/v1/forecast"
_CURRENT = "temperature_2m,apparent_temperature,relative_humidity_2m,precipitation,weather_code,wind_speed_10m"

# WMO weather interpretation codes, as documented by Open-Meteo.
WEATHER_CODES = {
    0: "clear sky",
    1: "mainly clear",
    2: "partly cloudy",
    3: "overcast",
    45: "fog",
    48: "depositing rime fog",
    51: "light drizzle",
    53: "moderate drizzle",
    55: "dense drizzle",
    56: "light freezing drizzle",
    57: "dense freezing drizzle",
    61: "slight rain",
    63: "moderate rain",
    65: "heavy rain",
    66: "light freezing rain",
    67: "heavy freezing rain",
    71: "slight snow fall",
    73: "moderate snow fall",
    75: "heavy snow fall",
    77: "snow grains",
    80: "slight rain showers",
    81: "moderate rain showers",
    82: "violent rain showers",
    85: "slight snow showers",
    86: "heavy snow showers",
    95: "thunderstorm",
    96: "thunderstorm with slight hail",
    99: "thunderstorm with heavy hail",
}


def _get_json(client: httpx.Client, url: str, params: dict[str, Any]) -> dict[str, Any]:
    response = client.get(url, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"the weather service answered HTTP {response.status_code}; try again later")
    data = response.json()
    if not isinstance(data, dict):
        raise RuntimeError("the weather service sent an unexpected answer")
    return data


def make_weather_tool(*, transport: httpx.BaseTransport | None = None, timeout: float = 10.0) -> Tool:
    """A ``get_weather`` tool; ``transport`` replaces the network (e.g. ``httpx.MockTransport``)."""

    @tool(name="get_weather", timeout=2 * timeout + 5)
    def get_weather(
        city: Annotated[str, "The name of the city, e.g. 'Beijing' or 'San Francisco'"],
        unit: Annotated[Literal["celsius", "fahrenheit"], "Temperature unit"] = "celsius",
    ) -> dict[str, Any]:
        """Get the current weather for a city: conditions, temperature, humidity, precipitation and wind."""
        with httpx.Client(transport=transport, timeout=timeout) as client:
            places = (
                _get_json(
                    client, GEOCODING_URL, {"name": city.strip(), "count": 1, "language": "en", "format": "json"}
                ).get("results")
                or []
            )
            if not places:
                raise LookupError(f"no place named {city!r} was found; check the spelling or try the English name")
            place = places[0]
            data = _get_json(
                client,
                FORECAST_URL,
                {
                    "latitude": place["latitude"],
                    "longitude": place["longitude"],
                    "current": _CURRENT,
                    "temperature_unit": unit,
                    "wind_speed_unit": "kmh",
                    "timezone": "auto",
                },
            )
        current, units = data.get("current") or {}, data.get("current_units") or {}

        def reading(key: str) -> str | None:
            value = current.get(key)
            return None if value is None else f"{value} {units.get(key, '')}".strip()

        return {
            "city": place.get("name", city),
            "region": place.get("admin1"),
            "country": place.get("country"),
            "local_time": current.get("time"),
            "weather": WEATHER_CODES.get(current.get("weather_code"), f"code {current.get('weather_code')}"),
            "temperature": reading("temperature_2m"),
            "feels_like": reading("apparent_temperature"),
            "humidity": reading("relative_humidity_2m"),
            "precipitation": reading("precipitation"),
            "wind_speed": reading("wind_speed_10m"),
        }

    return get_weather


get_weather = make_weather_tool()
