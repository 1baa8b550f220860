// World map for the console: coastlines, day/night, the station and its ground track (SVG).
// Equirectangular: x = longitude, y = -latitude, in a viewBox of -180 -90 360 180.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const TRACK_BACK_MIN = 45;
  const TRACK_AHEAD_MIN = 90;
  const TRACK_STEP_S = 60;
  const TRACK_REFRESH_MS = 5 * 60 * 1000;
  const HISTORY_MAX = 600;

  function svg(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (parent) parent.appendChild(node);
    return node;
  }

  function ringPath(flat, shift) {
    let d = "";
    for (let i = 0; i < flat.length; i += 2) {
      d += (i === 0 ? "M" : "L") + (flat[i] + shift).toFixed(1) + "," + (-flat[i + 1]).toFixed(1);
    }
    return d + "Z";
  }

  // Splits a lon/lat polyline where it crosses the antimeridian, so no line spans the map.
  function trackPath(points) {
    let d = "";
    let prev = null;
    for (const p of points) {
      const jump = prev && Math.abs(p.lon - prev.lon) > 180;
      d += (prev === null || jump ? "M" : "L") + p.lon.toFixed(2) + "," + (-p.lat).toFixed(2);
      prev = p;
    }
    return d;
  }

  // The sub-solar point (degrees), good to a fraction of a degree: enough for shading night.
  function subsolar(date) {
    const rad = Math.PI / 180;
    const days = date.getTime() / 86400000 - 10957.5; // since J2000.0
    const meanLon = (280.46 + 0.9856474 * days) % 360;
    const anomaly = ((357.528 + 0.9856003 * days) % 360) * rad;
    const eclLon = (meanLon + 1.915 * Math.sin(anomaly) + 0.02 * Math.sin(2 * anomaly)) * rad;
    const obliquity = (23.439 - 0.0000004 * days) * rad;
    const decl = Math.asin(Math.sin(obliquity) * Math.sin(eclLon));
    const ra = Math.atan2(Math.cos(obliquity) * Math.sin(eclLon), Math.cos(eclLon));
    const gmst = (280.46061837 + 360.98564736629 * days) % 360;
    let lon = (ra / rad - gmst) % 360;
    if (lon > 180) lon -= 360;
    if (lon < -180) lon += 360;
    return { lat: decl / rad, lon: lon };
  }

  function nightPath(date) {
    const sun = subsolar(date);
    const rad = Math.PI / 180;
    const tanDecl = Math.tan((Math.abs(sun.lat) < 0.1 ? 0.1 : sun.lat) * rad);
    let d = "";
    for (let lon = -180; lon <= 180; lon += 2) {
      const lat = Math.atan(-Math.cos((lon - sun.lon) * rad) / tanDecl) / rad;
      d += (lon === -180 ? "M" : "L") + lon + "," + (-lat).toFixed(2);
    }
    // Night is the hemisphere away from the sun: close over the pole the sun does not light.
    const poleY = sun.lat > 0 ? 90 : -90;
    return d + "L180," + poleY + "L-180," + poleY + "Z";
  }

  class IssMap {
    constructor(root, landUrl) {
      this.root = root;
      this.history = [];
      this.track = null;
      this.trackFetchedAt = 0;
      this.trackSource = "pending"; // "iss" when /iss?at= answers, else "history"
      svg("rect", { x: -180, y: -90, width: 360, height: 180, class: "ocean" }, root);
      const grid = svg("g", { class: "graticule" }, root);
      for (let lon = -150; lon <= 150; lon += 30) svg("line", { x1: lon, y1: -90, x2: lon, y2: 90 }, grid);
      for (let lat = -60; lat <= 60; lat += 30) svg("line", { x1: -180, y1: -lat, x2: 180, y2: -lat }, grid);
      svg("line", { x1: -180, y1: 0, x2: 180, y2: 0, class: "equator" }, grid);
      this.land = svg("path", { class: "land", d: "" }, root);
      this.night = svg("path", { class: "night", d: "" }, root);
      this.past = svg("path", { class: "track-past", d: "" }, root);
      this.ahead = svg("path", { class: "track-ahead", d: "" }, root);
      this.marker = svg("g", { class: "iss-marker hidden" }, root);
      svg("circle", { r: 9, class: "iss-halo" }, this.marker);
      svg("circle", { r: 3.2, class: "iss-dot" }, this.marker);
      this.label = svg("text", { class: "iss-label", x: 6, y: -6 }, this.marker);
      this.label.textContent = "ISS";
      this.drawNight();
      fetch(landUrl)
        .then((r) => (r.ok ? r.json() : null))
        .then((data) => data && this.drawLand(data.rings))
        .catch(() => {});
    }

    drawLand(rings) {
      const parts = [];
      for (const flat of rings) {
        let min = Infinity;
        let max = -Infinity;
        for (let i = 0; i < flat.length; i += 2) {
          if (flat[i] < min) min = flat[i];
          if (flat[i] > max) max = flat[i];
        }
        parts.push(ringPath(flat, 0));
        if (max > 180) parts.push(ringPath(flat, -360));
        if (min < -180) parts.push(ringPath(flat, 360));
      }
      this.land.setAttribute("d", parts.join(""));
    }

    drawNight() {
      this.night.setAttribute("d", nightPath(new Date()));
    }

    // A position the page learned (pushed by the server or injected into a request).
    observe(state) {
      if (!state || typeof state.latitude !== "number" || typeof state.longitude !== "number") return;
      const t = Date.parse(state.at) || Date.now();
      const last = this.history[this.history.length - 1];
      if (!last || t > last.t) {
        this.history.push({ t: t, lat: state.latitude, lon: state.longitude });
        if (this.history.length > HISTORY_MAX) this.history.shift();
      } else if (t < last.t) {
        return; // older than what is shown (e.g. a replayed request)
      }
      this.marker.setAttribute("transform", "translate(" + state.longitude.toFixed(2) + "," + (-state.latitude).toFixed(2) + ")");
      this.marker.classList.remove("hidden");
      this.drawNight();
      this.drawTrack();
      this.maybeFetchTrack();
    }

    drawTrack() {
      const now = Date.now();
      if (this.track && this.track.length) {
        this.past.setAttribute("d", trackPath(this.track.filter((p) => p.t <= now)));
        this.ahead.setAttribute("d", trackPath(this.track.filter((p) => p.t >= now - TRACK_STEP_S * 1000)));
      } else {
        this.past.setAttribute("d", trackPath(this.history));
        this.ahead.setAttribute("d", "");
      }
    }

    // The ground track from /iss?track=<minutes> when the server has it; else the positions seen so far.
    maybeFetchTrack() {
      const now = Date.now();
      if (this.fetching || now - this.trackFetchedAt < TRACK_REFRESH_MS) return;
      this.fetching = true;
      this.trackFetchedAt = now;
      fetch("/iss?track=" + TRACK_AHEAD_MIN + "&step=" + TRACK_STEP_S, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
        .then((body) => {
          if (!Array.isArray(body.track) || !body.track.length) throw new Error("no track");
          this.track = body.track
            .map((p) => ({ t: Date.parse(p.at), lat: Number(p.latitude), lon: Number(p.longitude) }))
            .filter((p) => Number.isFinite(p.t) && Number.isFinite(p.lat) && Number.isFinite(p.lon))
            .filter((p) => p.t >= now - TRACK_BACK_MIN * 60000);
          this.trackSource = "iss";
        })
        .catch(() => {
          this.trackSource = "history";
        })
        .finally(() => {
          this.fetching = false;
          this.drawTrack();
          if (this.onTrack) this.onTrack();
        });
    }
  }

  window.IssMap = IssMap;
})();
