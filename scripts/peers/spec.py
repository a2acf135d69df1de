"""Constants of the orders job shared by the three reference implementations (see mapping.md)."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

SRC_COLS = ["OrderID", "Cust_Email", "first", "last", "order_ts", "amount_cents",
            "country", "status", "qty", "weight_lb", "comment", "gift", "src_system"]

# The same target schema conform's bench job uses.
with open(os.path.join(HERE, "..", "..", "testdata", "bench", "target.schema.json"), encoding="utf-8") as _f:
    SCHEMA = json.load(_f)

TARGET_COLS = list(SCHEMA["properties"])          # output column order = error order
COUNTRIES = SCHEMA["properties"]["country"]["enum"]
STATUSES = SCHEMA["properties"]["status"]["enum"]
EMAIL_RE = SCHEMA["properties"]["customer_email"]["pattern"]      # anchored ^...$
EMAIL_RE_BODY = EMAIL_RE[1:-1]                                     # for full-match APIs
INT_RE = r"^[+-]?[0-9]+$"
DEC_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
TS_FORMATS = ["%Y-%m-%dT%H:%M:%S", "%d/%m/%Y %H:%M"]
GIFT_TRUE = ["y", "yes", "true", "1"]
GIFT_FALSE = ["n", "no", "false", "0"]
LB_TO_KG = 0.45359237
TRIM_CHARS = " \t\r\n"
# rule order inside one field (mapping.md, step 3)
RULE_ORDER = ["required", "type", "format", "minimum", "maximum", "maxLength", "pattern", "enum"]
