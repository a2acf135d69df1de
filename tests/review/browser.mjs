// Drives the review page in Debian's headless Chromium for tests/it/review.rs: reads the
// fields' order, searches, corrects a value, types expressions, takes a candidate, applies and
// pins. Prints one JSON line of what it saw; the Rust test judges it.
import { chromium } from "playwright-core";

const [url, shot, staticFile, downloadTo] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const out = { errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  page.setDefaultTimeout(30000);
  page.on("pageerror", (e) => out.errors.push(String(e)));
  await page.goto(url);
  out.invalid_before = (await page.textContent("section.source dd.invalid-count")).trim();
  out.order = await page.$$eval("section.source .field", (els) =>
    els.map((e) => [e.dataset.field, e.querySelector("summary .att").textContent]));

  // The docs' screenshot: the page as it opens, the value table of `status` unfolded.
  if (shot) await page.screenshot({ path: shot });

  // The served page's download: the sample's invalid rows as they stand.
  const [served] = await Promise.all([
    page.waitForEvent("download"),
    page.click("section.source button.download"),
  ]);
  out.served_download = (await (await served.createReadStream()).toArray()).join("").split("\n").filter(Boolean).length;

  await page.fill("#search", "stat");
  out.search = await page.$$eval(".field:not(.hidden)", (els) => els.map((e) => e.dataset.field));
  await page.fill("#search", "");

  const status = page.locator('.field[data-field="status"]');
  await status.evaluate((d) => { d.open = true; });
  for (const [from, to] of [["active", "Active"], ["inactive", "Inactive"], ["on hold", "Pending"]]) {
    await status.locator(`select.correct[data-value="${from}"]`).selectOption(to);
  }

  const amount = page.locator('.field[data-field="amount"]');
  await amount.evaluate((d) => { d.open = true; });
  const edit = amount.locator("textarea.edit");
  await edit.fill("read_file('/etc/passwd')");
  await amount.locator(".compile .bad").waitFor();
  out.compile_error = await amount.locator(".compile").textContent();
  await edit.fill('abs(parse_number("amt"))');
  await amount.locator(".compile .ok").waitFor();
  out.compile_ok = await amount.locator(".compile").textContent();

  const undecided = page.locator(".field.needs-undecided").first();
  out.candidate_field = await undecided.getAttribute("data-field");
  await undecided.evaluate((d) => { d.open = true; });
  await undecided.locator("button.use").first().click();

  await page.click("section.source button.apply");
  await page.locator("section.source .status", { hasText: "applied" }).waitFor();
  out.invalid_after_apply = (await page.textContent("section.source dd.invalid-count")).trim();

  await page.click("section.source button.pin");
  await page.locator("section.source .status", { hasText: "pinned" }).waitFor();
  out.pinned = await page.textContent("section.source .status");

  // The static copy opened from disk: read-only, yet searchable, filterable, downloadable.
  if (staticFile) {
    const copy = await browser.newPage({ acceptDownloads: true });
    copy.setDefaultTimeout(30000);
    copy.on("pageerror", (e) => out.errors.push("static: " + String(e)));
    await copy.goto("file://" + staticFile);
    out.static_disabled = await copy.$$eval("button.act, textarea.edit, select.correct",
      (els) => els.length > 0 && els.every((e) => e.disabled));
    await copy.fill("#search", "amount");
    out.static_search = await copy.$$eval(".field:not(.hidden)", (els) => els.map((e) => e.dataset.field));
    await copy.selectOption("select.by-field", "status");
    out.static_groups = await copy.$$eval("table.groups tbody tr:not(.hidden)", (els) => els.map((e) => e.dataset.field));
    const [download] = await Promise.all([
      copy.waitForEvent("download"),
      copy.click("button.download"),
    ]);
    await download.saveAs(downloadTo);
    out.download_name = download.suggestedFilename();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
