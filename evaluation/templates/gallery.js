// The gallery's cards: filter, sort and page the rows of data.js; the state lives in the address's #fragment.
(function () {
  "use strict";
  const data = window.COCU_GALLERY;
  const [KEY, CAPTION, THUMB, NAMED, CURATED, SCORES, CLUSTERS, ERROR, RIGHT, MISSED, SHARD, ROW] =
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
  const names = data.concepts;
  const ids = new Map(names.map((name, i) => [name, i]));
  const controls = ["concept", "origin", "truth", "error", "sort"]
    .map((id) => document.getElementById(id)).filter(Boolean);
  const grid = document.getElementById("grid");
  let page = 0;

  const list = document.getElementById("concept-list");
  for (const name of [...names].sort()) {
    const option = document.createElement("option");
    option.value = name;
    list.appendChild(option);
  }

  function readState() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const control of controls) {
      const value = params.get(control.id);
      if (value !== null) control.value = value;
    }
    page = Math.max(0, parseInt(params.get("page") || "1", 10) - 1);
  }

  function writeState() {
    const params = new URLSearchParams();
    for (const control of controls) {
      if (control.value && control.value !== "all" && control.value !== "file") params.set(control.id, control.value);
    }
    if (page > 0) params.set("page", String(page + 1));
    history.replaceState(null, "", "#" + params.toString());
  }

  function value(id) {
    const control = document.getElementById(id);
    return control ? control.value : "all";
  }

  // the position of the chosen concept in a row's curated list, or -1
  function position(row, concept) {
    return concept === undefined ? -1 : row[CURATED].indexOf(concept);
  }

  function keep(row, concept, origin, truth, error) {
    if (error === "only" && row[ERROR] === null) return false;
    if (error === "none" && row[ERROR] !== null) return false;
    const named = new Set(row[NAMED]);
    let at = [...row[CURATED].keys()];
    if (concept !== undefined) {
      at = at.filter((i) => row[CURATED][i] === concept);
      if (at.length === 0) return false;
    }
    if (origin === "added") at = at.filter((i) => !named.has(row[CURATED][i]));
    if (origin === "named") at = at.filter((i) => named.has(row[CURATED][i]));
    if (origin !== "all" && at.length === 0) return false;
    if (truth !== "all") {
      const added = at.filter((i) => !named.has(row[CURATED][i]));
      const wrong = added.some((i) => !row[RIGHT][i]);
      if (truth === "wrong" && !wrong) return false;
      if (truth === "right" && (wrong || added.length === 0)) return false;
    }
    return true;
  }

  function score(row, concept) {
    const at = concept === undefined ? 0 : position(row, concept);
    return at >= 0 && at < row[SCORES].length ? row[SCORES][at] : -Infinity;
  }

  function selection() {
    const typed = value("concept").trim();
    const concept = typed ? ids.get(typed) : undefined;
    if (typed && concept === undefined) return { rows: [], note: `no concept named "${typed}"` };
    const [origin, truth, error, sort] = ["origin", "truth", "error", "sort"].map(value);
    const rows = data.rows.filter((row) => keep(row, concept, origin, truth, error));
    if (sort !== "file") {
      const sign = sort === "asc" ? 1 : -1;
      rows.sort((a, b) => sign * (score(a, concept) - score(b, concept)));
    }
    return { rows, concept, note: "" };
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clusterColour(cluster) {
    return `hsl(${(cluster * 137.508) % 360}, 70%, 86%)`;
  }

  function card(row, concept) {
    const node = element("div", row[ERROR] === null ? "card" : "card failed");
    if (row[THUMB]) {
      const image = element("img", "thumb");
      image.src = row[THUMB];
      image.alt = row[KEY];
      image.loading = "lazy";
      node.appendChild(image);
    } else {
      node.appendChild(element("div", "thumb nothumb", "image not decodable"));
    }
    node.appendChild(element("div", "key", `${row[KEY]} (${data.shards[row[SHARD]]} row ${row[ROW]})`));
    node.appendChild(element("div", "caption", row[CAPTION] || "(no caption)"));
    if (row[ERROR] !== null) node.appendChild(element("div", "error", "cocu_error: " + row[ERROR]));
    const named = new Set(row[NAMED]);
    const caption = element("div", "chips");
    caption.appendChild(element("span", "row-label", "caption:"));
    for (const id of row[NAMED]) caption.appendChild(element("span", "chip caption", names[id]));
    node.appendChild(caption);
    const curated = element("div", "chips");
    curated.appendChild(element("span", "row-label", "curated:"));
    row[CURATED].forEach((id, i) => {
      let className = "chip curated";
      if (named.has(id)) className += " named";
      else if (data.truth) className += row[RIGHT][i] ? " right" : " wrong";
      if (id === concept) className += " focus";
      const chip = element("span", className, names[id]);
      chip.appendChild(element("span", "score", row[SCORES][i].toFixed(2)));
      const cluster = row[CLUSTERS].length ? row[CLUSTERS][i] : null;
      chip.style.background = cluster === null ? "#eee" : clusterColour(cluster);
      chip.title = `score ${row[SCORES][i]}` + (cluster === null ? "" : `, cluster ${cluster}`) +
        (named.has(id) ? ", named by the caption" : ", added by curation");
      curated.appendChild(chip);
    });
    node.appendChild(curated);
    if (data.truth && row[MISSED] && row[MISSED].length) {
      const missed = element("div", "chips");
      missed.appendChild(element("span", "row-label", "missed:"));
      for (const id of row[MISSED]) missed.appendChild(element("span", "chip missed", names[id]));
      node.appendChild(missed);
    }
    return node;
  }

  function pager(target, pages) {
    target.replaceChildren();
    const back = element("button", "", "\u2190 previous");
    back.disabled = page === 0;
    back.onclick = () => { page -= 1; render(); };
    const next = element("button", "", "next \u2192");
    next.disabled = page >= pages - 1;
    next.onclick = () => { page += 1; render(); };
    target.append(back, element("span", "muted", `page ${pages ? page + 1 : 0} of ${pages}`), next);
  }

  function render() {
    const { rows, concept, note } = selection();
    const pages = Math.ceil(rows.length / data.page_size);
    page = Math.min(page, Math.max(pages - 1, 0));
    const shown = rows.slice(page * data.page_size, (page + 1) * data.page_size);
    grid.replaceChildren(...shown.map((row) => card(row, concept)));
    document.getElementById("count").textContent = note || `${rows.length.toLocaleString()} of ` +
      `${data.rows.length.toLocaleString()} cards match`;
    pager(document.getElementById("pager-top"), pages);
    pager(document.getElementById("pager-bottom"), pages);
    writeState();
  }

  for (const control of controls) control.addEventListener("change", () => { page = 0; render(); });
  window.addEventListener("hashchange", () => { readState(); render(); });
  readState();
  render();
})();
