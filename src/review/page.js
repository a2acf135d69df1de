// The review page's behaviour: decisions are kept per source in `state` and sent to the
// server (apply, pin); the expression editor is compiled on the server as the reviewer types.
// A static copy (`--html`) only filters and downloads.
(function () {
  "use strict";
  var body = document.body;
  var served = body.dataset.mode === "served";
  var token = body.dataset.token || "";
  var state = {};

  function post(path, payload) {
    return fetch(path + "?token=" + encodeURIComponent(token), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(payload),
    });
  }

  function decisionOf(src, field) {
    var f = field.dataset.field;
    if (!state[src][f]) {
      state[src][f] = { expr: JSON.parse(field.dataset.current || "null"), values: {}, reviewed: false };
    }
    field.classList.add("decided");
    return state[src][f];
  }

  function status(section, text, bad) {
    var s = section.querySelector(".status");
    if (s) {
      s.textContent = text;
      s.classList.toggle("bad", !!bad);
    }
  }

  function bindField(section, src, field) {
    var edit = field.querySelector("textarea.edit");
    var out = field.querySelector(".compile");
    var timer = null;
    function check() {
      var d = decisionOf(src, field);
      var text = edit.value.trim();
      d.expr = text === "" ? null : text;
      clearTimeout(timer);
      if (d.expr === null) {
        out.textContent = "left unmapped";
        return;
      }
      timer = setTimeout(function () {
        post("/api/compile", { source: src, field: field.dataset.field, expr: d.expr })
          .then(function (r) { return r.json(); })
          .then(function (j) {
            if (edit.value.trim() !== d.expr) return;
            out.innerHTML = "";
            var span = document.createElement("span");
            if (j.ok) {
              span.className = "ok";
              span.textContent = "compiles; reads " + (j.sources.length ? j.sources.join(", ") : "no column");
            } else {
              span.className = "bad";
              span.textContent = j.error;
            }
            out.appendChild(span);
          })
          .catch(function (e) { out.textContent = String(e); });
      }, 250);
    }
    if (edit) edit.addEventListener("input", check);
    function bindUse() {
      field.querySelectorAll("button.use").forEach(function (b) {
        b.addEventListener("click", function () {
          edit.value = b.dataset.expr;
          check();
        });
      });
    }
    bindUse();
    // A folded field's candidates are run on the sample when it is first unfolded.
    field.addEventListener("toggle", function () {
      var list = field.querySelector("ol.candidates[data-lazy]");
      if (!served || !field.open || !list || list.dataset.loading) return;
      list.dataset.loading = "1";
      post("/api/candidates", { source: src, field: field.dataset.field })
        .then(function (r) {
          return r.text().then(function (t) { return { ok: r.ok, text: t }; });
        })
        .then(function (r) {
          if (!r.ok) {
            list.insertAdjacentHTML("beforeend", "<li class=\"bad\"></li>");
            list.lastElementChild.textContent = JSON.parse(r.text).error;
            return;
          }
          var doc = new DOMParser().parseFromString(r.text, "text/html");
          list.replaceWith(doc.querySelector("ol.candidates"));
          bindUse();
        })
        .catch(function (e) { list.insertAdjacentText("beforeend", String(e)); });
    });
    var unmap = field.querySelector("button.unmap");
    if (unmap) unmap.addEventListener("click", function () {
      edit.value = "";
      check();
    });
    var reviewed = field.querySelector("input.reviewed");
    if (reviewed) reviewed.addEventListener("change", function () {
      decisionOf(src, field).reviewed = reviewed.checked;
    });
    field.querySelectorAll("select.correct").forEach(function (sel) {
      sel.addEventListener("change", function () {
        var d = decisionOf(src, field);
        if (sel.value === "") delete d.values[sel.dataset.value];
        else d.values[sel.dataset.value] = sel.value;
      });
    });
  }

  function bindInvalid(section) {
    var byField = section.querySelector("select.by-field");
    var byReason = section.querySelector("select.by-reason");
    function filter() {
      section.querySelectorAll("table.groups tbody tr").forEach(function (tr) {
        var show = (!byField.value || tr.dataset.field === byField.value) &&
          (!byReason.value || tr.dataset.reason === byReason.value);
        tr.classList.toggle("hidden", !show);
      });
    }
    if (byField) byField.addEventListener("change", filter);
    if (byReason) byReason.addEventListener("change", filter);
    var download = section.querySelector("button.download");
    function save(text) {
      var blob = new Blob([text], { type: "application/x-ndjson" });
      var a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = section.dataset.source + "_invalid_sample.ndjson";
      document.body.appendChild(a);
      a.click();
      a.remove();
    }
    if (download) download.addEventListener("click", function () {
      var rows = section.querySelector("script.invalid-rows");
      if (rows) return save(rows.textContent);
      var src = section.dataset.source;
      post("/api/invalid", { source: src, decisions: state[src] || {} })
        .then(function (r) { return r.text().then(function (t) { return { ok: r.ok, text: t }; }); })
        .then(function (r) {
          if (!r.ok) return status(section, JSON.parse(r.text).error, true);
          save(r.text);
        })
        .catch(function (e) { status(section, String(e), true); });
    });
  }

  function replace(section, html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var fresh = doc.querySelector("section.source");
    section.replaceWith(fresh);
    bind(fresh);
    search();
    return fresh;
  }

  function apply(section) {
    var src = section.dataset.source;
    status(section, "applying…");
    post("/api/apply", { source: src, decisions: state[src] })
      .then(function (r) {
        return r.text().then(function (t) { return { ok: r.ok, text: t }; });
      })
      .then(function (r) {
        if (!r.ok) return status(section, JSON.parse(r.text).error, true);
        var fresh = replace(section, r.text);
        status(fresh, "applied to the sample; nothing written");
      })
      .catch(function (e) { status(section, String(e), true); });
  }

  function pin(section) {
    var src = section.dataset.source;
    status(section, "pinning…");
    post("/api/pin", { source: src, base: section.dataset.base, decisions: state[src] })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, j: j }; }); })
      .then(function (r) {
        if (!r.ok) {
          status(section, r.j.error, true);
          if (r.j.reload) {
            var b = document.createElement("button");
            b.textContent = "Reload";
            b.type = "button";
            b.addEventListener("click", function () { location.reload(); });
            section.querySelector(".actions").appendChild(b);
          }
          return;
        }
        state[src] = {};
        var fresh = replace(section, r.j.html);
        status(fresh, "pinned: wrote " + r.j.path + (r.j.previous ? " (the document before it is kept at " + r.j.previous + ")" : ""));
      })
      .catch(function (e) { status(section, String(e), true); });
  }

  function bind(section) {
    var src = section.dataset.source;
    state[src] = state[src] || {};
    section.querySelectorAll(".field").forEach(function (f) {
      if (f.dataset.decision) state[src][f.dataset.field] = JSON.parse(f.dataset.decision);
      bindField(section, src, f);
    });
    bindInvalid(section);
    if (!served) {
      section.querySelectorAll(".act").forEach(function (e) { e.disabled = true; });
      return;
    }
    var a = section.querySelector("button.apply");
    if (a) a.addEventListener("click", function () { apply(section); });
    var p = section.querySelector("button.pin");
    if (p) p.addEventListener("click", function () { pin(section); });
  }

  var box = document.getElementById("search");
  function search() {
    var q = (box.value || "").trim().toLowerCase();
    document.querySelectorAll(".field").forEach(function (f) {
      f.classList.toggle("hidden", q !== "" && f.dataset.field.toLowerCase().indexOf(q) < 0);
    });
  }
  box.addEventListener("input", search);
  document.querySelectorAll("section.source").forEach(bind);
})();
