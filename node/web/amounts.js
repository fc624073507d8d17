// Amounts travel as decimal strings (wei); here they become BigInt, never Number, so no digit is ever lost.

const DECIMAL = /^-?[0-9]{1,80}$/;

export function wei(value) {
  if (typeof value !== "string" || !DECIMAL.test(value)) throw new Error(`not a decimal amount: ${value}`);
  return BigInt(value);
}

export function sum(values) {
  return values.reduce((acc, v) => acc + wei(v), 0n);
}

function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// "1234500000000000000", 18 -> "1.2345" (exact: every non-zero decimal kept; thousands grouped)
export function formatUnits(value, decimals) {
  let v = typeof value === "bigint" ? value : wei(value);
  const negative = v < 0n;
  if (negative) v = -v;
  const base = 10n ** BigInt(decimals);
  const whole = group((v / base).toString());
  const fraction = decimals > 0 ? (v % base).toString().padStart(decimals, "0").replace(/0+$/, "") : "";
  return (negative ? "-" : "") + whole + (fraction ? "." + fraction : "");
}

export function formatToken(value, token) {
  if (!token) return `${formatUnits(value, 0)} wei`;
  return `${formatUnits(value, token.decimals)} ${token.symbol}`;
}

// a / b as a percentage string with one decimal, computed in BigInt
export function percent(a, b) {
  const x = typeof a === "bigint" ? a : wei(a);
  const y = typeof b === "bigint" ? b : wei(b);
  if (y === 0n) return "–";
  const tenths = (x * 1000n) / y;
  return `${tenths / 10n}.${tenths % 10n}%`;
}
