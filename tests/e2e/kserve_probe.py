"""Run by tests/e2e/test_models_v2.py with the KServe SDK's own environment
(.venv-kserve, `make kserve-client`): its REST client for the V2 protocol against a
running Refit. Prints what it saw as JSON."""

import asyncio
import json
import sys

from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str, texts: list[str]) -> dict:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    try:
        seen = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model_ready": await client.is_model_ready(url, model),
        }
        text = InferInput(name="text", shape=[len(texts)], datatype="BYTES", data=texts)
        request = InferRequest(model_name=model, infer_inputs=[text])
        result = await client.infer(url, request, model_name=model)
        labels = result.get_output_by_name("label").as_numpy().tolist()
        seen["labels"] = [x.decode() if isinstance(x, bytes) else x for x in labels]
        seen["probabilities_shape"] = list(
            result.get_output_by_name("probabilities").as_numpy().shape
        )
        return seen
    finally:
        await client.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))))
