// How many SMS segments a body costs, counted the way carriers count it: the
// web console's live counter. The same algorithm as services/messaging/segments.py
// (a test holds the two to the same answers); read that module's docstring for why.
//
//                  one segment   each part of a multi-part message
//     GSM-7        160 septets   153 septets
//     UCS-2         70 units      67 units (UTF-16 code units)
//
// An extension character costs two septets, a character outside the BMP two
// UTF-16 units, and neither pair is ever split across two parts.

// The GSM 03.38 default alphabet, one row of the code table per line
// (0x00 to 0x7F). 0x1B is the escape to the extension table, not a character.
const BASIC_ROWS = [
  "@£$¥èéùìòÇ\nØø\rÅå", // 0x00  LF at 0x0A, CR at 0x0D
  "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ", // 0x10  escape at 0x1B
  " !\"#¤%&'()*+,-./", // 0x20
  "0123456789:;<=>?", // 0x30
  "¡ABCDEFGHIJKLMNO", // 0x40
  "PQRSTUVWXYZÄÖÑÜ§", // 0x50
  "¿abcdefghijklmno", // 0x60
  "pqrstuvwxyzäöñüà", // 0x70
];
const ESCAPE = "\x1b";

export const GSM_7_BASIC = new Set([...BASIC_ROWS.join("")].filter((ch) => ch !== ESCAPE));

// Sent as escape + code, so each costs two septets.
export const GSM_7_EXTENSION = new Set(["\f", "^", "{", "}", "\\", "[", "~", "]", "|", "€"]);

// [units in a lone segment, units in each part of a multi-part message]
const CAPACITY = { GSM_7: [160, 153], UCS_2: [70, 67] };

/**
 * Measure a body as a carrier would; an empty body is 0 segments.
 * @param {string} body
 * @returns {{encoding: "GSM_7" | "UCS_2", units: number, segments: number}}
 */
export function measure(body) {
  const chars = [...body]; // code points: a surrogate pair stays one character
  const gsm = chars.every((ch) => GSM_7_BASIC.has(ch) || GSM_7_EXTENSION.has(ch));
  const encoding = gsm ? "GSM_7" : "UCS_2";
  const costs = chars.map((ch) => (gsm ? (GSM_7_EXTENSION.has(ch) ? 2 : 1) : ch.length));
  const units = costs.reduce((sum, cost) => sum + cost, 0);
  return { encoding, units, segments: segmentsOf(costs, units, CAPACITY[encoding]) };
}

// Pack characters into parts greedily; a pair that would straddle two parts
// moves whole to the next one.
function segmentsOf(costs, units, [single, part]) {
  if (units <= single) return units ? 1 : 0;
  let parts = 1;
  let used = 0;
  for (const cost of costs) {
    if (used + cost > part) {
      parts += 1;
      used = 0;
    }
    used += cost;
  }
  return parts;
}
