// The event group page's interactive sky (broker/web/templates/group.html): Aladin Lite 3
// (CDS; GPL-3, fetched from npm by deploy/web_assets.sh into /static/vendor/aladin-lite/),
// with the 90 % credible region as a MOC (/groups/<key>/moc.json), the point localization
// with its error circle, coincident counterparts and catalog matches. The survey images
// come from the internet; the region and markers come from this server, so they show
// (over a blank sky) without it.
const el = document.getElementById("aladin");

function note(text) {
  const p = document.createElement("p");
  p.className = "note";
  p.id = "aladin-status";
  p.textContent = text;
  el.replaceChildren(p);
}

async function start() {
  const cfg = JSON.parse(el.dataset.config || "{}");
  let A;
  try {
    A = (await import("/static/vendor/aladin-lite/aladin.js")).default;
    await A.init;
  } catch (err) {
    note("Aladin Lite could not start in this browser (" + String(err).slice(0, 120) + ").");
    return;
  }
  const loc = cfg.localization || {};
  let target = "0 0", fov = 180;
  if (loc.ra_deg !== null && loc.ra_deg !== undefined) {
    target = loc.ra_deg + " " + loc.dec_deg;
    fov = loc.kind === "point" ? Math.min(Math.max(6 * (loc.error_radius_deg || 0.01), 0.05), 180) : 60;
  }
  const aladin = A.aladin(el, {
    survey: "P/DSS2/color", target: target, fov: fov, projection: "AIT",
    cooFrame: "ICRS", showCooGridControl: true, showCooGrid: true, showReticle: false,
  });
  const overlay = A.graphicOverlay({ color: "#d62728", lineWidth: 2, name: "localization" });
  aladin.addOverlay(overlay);
  if (loc.kind === "point" && loc.error_radius_deg) {
    overlay.add(A.circle(loc.ra_deg, loc.dec_deg, loc.error_radius_deg, { color: "#d62728" }));
  }
  const counterparts = A.catalog({ name: "counterparts", sourceSize: 16, color: "#ffbf00", shape: "circle" });
  const matches = A.catalog({ name: "catalog matches", sourceSize: 10, color: "#1f77b4", shape: "square" });
  aladin.addCatalog(counterparts);
  aladin.addCatalog(matches);
  for (const m of cfg.markers || []) {
    const src = A.marker(m.ra, m.dec, { popupTitle: m.label, popupDesc: m.kind });
    (m.kind === "catalog" ? matches : counterparts).addSources([src]);
    if (m.kind !== "catalog" && m.radius) {
      overlay.add(A.circle(m.ra, m.dec, m.radius, { color: "#ffbf00" }));
    }
  }
  if (cfg.moc_url) {
    try {
      const r = await fetch(cfg.moc_url);
      const j = await r.json();
      if (j.moc && Object.keys(j.moc).length) {
        aladin.addMOC(A.MOCFromJSON(j.moc, {
          name: Math.round(100 * j.level) + " % region", color: "#ff6600", opacity: 0.25,
          lineWidth: 2, fill: true, perimeter: true,
        }));
        if (j.radius_deg > 0) {
          // the field of view is the view's width: fit the region's diameter in its height
          const aspect = Math.max(1, el.clientWidth / Math.max(1, el.clientHeight));
          aladin.gotoRaDec(j.center_ra_deg, j.center_dec_deg);
          aladin.setFoV(Math.min(Math.max(2.2 * j.radius_deg * aspect, 0.02), 360));
        }
      }
    } catch (err) {
      console.warn("moc.json", err);
    }
  }
  el.dataset.ready = "1";
}

if (el) start();
