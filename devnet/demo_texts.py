"""The demo Datanet's contributions: short factual notes written for this project (no third-party text), CC0.

What it holds: one file per contribution of the devnet seed (devnet/seed.py), as (contributor role index, file
name, bytes, license, accept?, reason): LoRA notes (Markdown), content addressing notes (JSONL {"text"}),
Ethereum and settlement questions and answers (JSONL {"prompt", "completion"}, with one lightly edited copy of a
LoRA note, which dedup flags as a near duplicate), attribution notes (plain text), and a spam file the curator
rejects. About 280 rows in all.
What it does not do: anything on chain or in a blockstore (seed.py sends these through datanets/).
"""

from __future__ import annotations

import json

LORA = [
    "LoRA stands for low-rank adaptation: instead of changing every weight of a model, it learns a small update.",
    "A LoRA update to a weight matrix W is the product B times A, where A and B are thin matrices.",
    "If W has shape d by k and the rank is r, then A has shape r by k and B has shape d by r.",
    "With a rank of 8 and a 4096 by 4096 projection, the update holds 65,536 numbers instead of about 16.8 million.",
    "The base weights stay frozen during LoRA training; only the A and B matrices receive gradients.",
    "B is usually initialised to zero, so a freshly created adapter leaves the model's output unchanged.",
    "A is usually initialised with small random values so that training can move B away from zero.",
    "The LoRA output is scaled by alpha divided by the rank, which keeps the step size stable across ranks.",
    "Raising the rank gives an adapter more capacity, and also more parameters to train and store.",
    "Many adapters work well with ranks between 4 and 64; the best value depends on the task and the data.",
    "LoRA is commonly applied to the attention projections: query, key, value and output.",
    "Adding LoRA to the feed-forward projections as well often helps on tasks that need new knowledge.",
    "An adapter file for a small model can be a few megabytes, while the base model takes gigabytes.",
    "Because adapters are small, one server can keep hundreds of them in memory next to one copy of the base model.",
    "Serving many adapters at once means that each request in a batch may use a different adapter.",
    "A batched LoRA kernel groups the tokens of each adapter so that its matrices are read once per step.",
    "SGMV applies a different small matrix to each contiguous segment of tokens in a batch.",
    "BGMV gathers a matrix per token, which suits decode steps where every request contributes one token.",
    "After training, a LoRA update can be merged into the base weights so that inference costs nothing extra.",
    "A merged model cannot switch adapters cheaply, so multi-tenant servers keep adapters separate.",
    "Adapters trained on the same base model can be swapped per request without reloading the base.",
    "An adapter is tied to its base model: the shapes of A and B must match the layers they modify.",
    "Loading an adapter built for a different base model should fail with a clear message, not wrong output.",
    "The PEFT library stores an adapter as a config file plus a safetensors file of the A and B tensors.",
    "The adapter config records the rank, alpha, target modules and the name of the base model.",
    "Safetensors files hold raw tensor bytes and a JSON header; loading them runs no code.",
    "Pickled checkpoint files can execute code when loaded, which is why careful servers refuse them.",
    "A server should check every tensor's name, shape and dtype before an adapter reaches the GPU.",
    "An adapter with NaN or infinite values would poison every output it touches and should be rejected.",
    "QLoRA trains LoRA adapters on top of a base model stored in 4-bit precision to save memory.",
    "DoRA splits a weight into a magnitude and a direction and applies the low-rank update to the direction.",
    "Fine-tuning with LoRA usually needs far less GPU memory than full fine-tuning of the same model.",
    "Optimizer state is kept only for the adapter parameters, which is where most of the memory saving comes from.",
    "A dataset of a few thousand good examples can be enough to teach an adapter a narrow style or format.",
    "Data quality matters more than quantity for small adapters: duplicated or noisy rows waste training steps.",
    "Training loss that keeps falling while validation loss rises is a sign that an adapter is overfitting.",
    "The learning rate for LoRA is often higher than for full fine-tuning, for example 1e-4 to 3e-4.",
    "Dropout on the LoRA path is a simple regulariser that some recipes use with small datasets.",
    "An adapter's quality should be measured on held-out prompts that never appeared in its training data.",
    "Two adapters can be compared by running the same prompts with greedy decoding and reading the outputs.",
    "Greedy decoding always picks the most likely next token, so the same prompt gives the same output.",
    "Temperature sampling divides the logits by a temperature before the softmax: lower values are more focused.",
    "Top-k sampling keeps only the k most likely tokens; top-p keeps the smallest set whose probability reaches p.",
    "A paged KV cache stores attention keys and values in fixed-size blocks, like pages of virtual memory.",
    "Prefix caching lets requests that share a prompt prefix reuse the same cached blocks.",
    "Cached blocks must be keyed by the adapter as well as the tokens, because adapters change the keys and values.",
    "Continuous batching adds new requests to a running batch as soon as others finish.",
    "Chunked prefill splits a long prompt over several steps so that decoding requests are not starved.",
    "A scheduler that admits the adapter with the least recent service keeps one busy adapter from starving others.",
    "CUDA graphs record a sequence of GPU launches once and replay it, which removes launch overhead on decode steps.",
    "Keeping metadata buffers at a fixed maximum size lets a captured CUDA graph stay valid as batches change.",
    "When GPU memory runs short, a server can evict idle adapters to host memory and reload them on demand.",
    "Host memory can in turn evict adapters to disk, and disk can fetch them again from the network by CID.",
    "A least-recently-used policy is a simple and effective way to decide which adapter to evict first.",
    "Pinning an adapter keeps it resident no matter how long it has been idle.",
    "Loading an adapter from disk on a background thread keeps the engine loop from stalling.",
    "The rank of a LoRA update bounds the rank of the change it can make to a weight matrix.",
    "Low-rank updates work because the weight changes needed for many tasks have low intrinsic dimension.",
    "An adapter trained for summarisation will not magically know facts that its training data never contained.",
    "Mixing adapters in one batch does not mix their effects: each token passes only through its own adapter.",
    "Adapter names are convenient for people, but a content identifier says exactly which weights are meant.",
    "Two adapters with identical bytes have the same content identifier, wherever they are stored.",
    "An adapter author can sign an announcement so that peers know who published a given identifier.",
    "Reproducible training needs the data version, the base model, the hyperparameters and the random seed.",
    "Recording which Datanet version an adapter was trained on lets anyone trace its outputs back to its data.",
    "Evaluation prompts should cover the cases users care about, not only the cases the data makes easy.",
    "A tokenizer turns text into integer ids; the same text can give different ids under different tokenizers.",
    "Token counts depend on the tokenizer, which is why a weight computed from tokens must name its tokenizer.",
    "Long prompts cost more to process because attention compares each token with every earlier token.",
    "Rotary position embeddings encode positions by rotating query and key vectors by position-dependent angles.",
    "Grouped-query attention shares key and value heads between several query heads to shrink the KV cache.",
    "RMSNorm rescales activations by their root mean square, without subtracting the mean as LayerNorm does.",
]

IPFS = [
    "A content identifier, or CID, names data by a hash of its bytes rather than by where it is stored.",
    "If a single byte of a file changes, its CID changes, so a CID always refers to exactly one content.",
    "A CIDv1 records a version, a codec, and a multihash that says which hash function was used.",
    "The raw codec means the block's bytes are the data itself, with no wrapping structure.",
    "The dag-pb codec is used for UnixFS nodes, which link to other blocks by their CIDs.",
    "Large files are split into chunks; each chunk becomes a leaf block and a tree of nodes links them.",
    "The default chunk size for many IPFS importers is 256 KiB.",
    "A balanced DAG layout links up to 174 children from each internal node.",
    "With raw leaves, a file's chunks are stored as raw blocks instead of being wrapped in UnixFS nodes.",
    "Two importers with the same chunker, layout and leaf settings produce the same CID for the same file.",
    "A small file that fits in one chunk gets the CID of a single raw block when raw leaves are enabled.",
    "Base32 lowercase is the usual text form of a CIDv1, and such CIDs start with the letter b.",
    "CIDs that start with bafk are raw blocks; CIDs that start with bafy are usually dag-pb nodes.",
    "Fetching by CID lets a client accept data from any source, because it can check the bytes itself.",
    "Every block received from a peer should be hashed and compared with its CID before it is stored.",
    "A block that does not match its CID must be discarded, and the peer that sent it can be distrusted.",
    "Verification happens per block, so a client can stop at the first bad block instead of after a download.",
    "A blockstore keeps blocks on disk, one file per block, named by the block's CID.",
    "Writing a block to a temporary file and renaming it means a crash never leaves half a block under its name.",
    "Re-checking a block's hash when it is read catches corruption on disk as well as in transit.",
    "A DAG is a directed acyclic graph: links point from parents to children and never form a cycle.",
    "Walking a DAG from its root finds every block the content needs.",
    "A DAG can link the same block twice, so a reader should bound how many bytes it will produce.",
    "A CAR file packs a root CID and a sequence of blocks into one file for transport.",
    "A trustless gateway serves CAR files over HTTP, and the client verifies every block it receives.",
    "A trustless gateway cannot lie about content: a wrong block simply fails verification.",
    "The distributed hash table maps a CID to the peers that say they can provide it.",
    "A provider record announces that a peer holds a CID; it expires unless the peer renews it.",
    "Finding providers through the DHT takes a few network round trips in a small network.",
    "A node that finishes downloading content can provide it too, so popular content spreads to more peers.",
    "libp2p is a modular networking stack: transports, security, stream multiplexing and protocols are separate.",
    "Noise is a handshake framework that gives libp2p connections encryption and authenticated peer identities.",
    "A peer ID is derived from the peer's public key, so a connection proves who is on the other side.",
    "Yamux multiplexes many logical streams over one connection, each with its own flow control window.",
    "Gossipsub spreads messages through a mesh of peers, with each peer forwarding to a few neighbours.",
    "Gossip messages should be validated before they are forwarded, so that invalid messages die quickly.",
    "Signing an announcement with the author's key lets every receiver check who published it.",
    "A multiaddr describes how to reach a peer, for example an IP address, a TCP port and a peer ID.",
    "Block exchange between peers can be a simple request for a list of CIDs and an answer block by block.",
    "Requesting many blocks in one message saves round trips compared with asking for one block at a time.",
    "Keeping the next request in flight while the current answer arrives keeps a fast link busy.",
    "Fetching a DAG level by level lets a client request all children of a level together.",
    "If one provider fails halfway, a client can keep the verified blocks and ask another provider for the rest.",
    "A timeout per block, rather than per file, lets large transfers proceed while still catching stalled peers.",
    "Bounding the bytes accepted for one fetch stops a peer from filling a disk with an enormous DAG.",
    "Content addressing makes caching safe: a cached block for a CID can never be stale.",
    "Deduplication falls out of content addressing: identical blocks are stored once.",
    "Two datasets that share rows share the blocks of those rows when each row is its own block.",
    "Giving each row of a dataset its own CID lets a manifest point at rows individually.",
    "A dataset manifest that lists row CIDs can be checked row by row by anyone who holds the blocks.",
    "Pinning tells a node to keep content and never garbage collect it.",
    "Garbage collection removes blocks that no pinned root links to.",
    "Normalising text before hashing, such as fixing line endings, makes equal texts get equal CIDs.",
    "Unicode normalisation form NFC composes characters, so an accented letter has one canonical encoding.",
    "A byte-order mark at the start of a UTF-8 file carries no meaning and is usually dropped.",
    "Canonical JSON sorts object keys and fixes spacing, so the same object always gives the same bytes.",
    "Floats are awkward in canonical JSON because different printers may write the same number differently.",
    "Strict UTF-8 decoding refuses invalid byte sequences instead of replacing them silently.",
    "A parser for untrusted JSON should bound both the input size and the nesting depth.",
    "A symbolic link in a directory being imported can point outside it, so careful importers refuse links.",
    "Kubo is the Go implementation of IPFS and a common reference for CIDs and importer behaviour.",
    "Matching Kubo's CIDs exactly means content added here can be fetched from the wider IPFS network.",
    "The sha2-256 multihash is the default hash for CIDs created by most IPFS tools.",
    "Content identifiers are stable across machines, so a CID written on chain points at the same bytes everywhere.",
    "Recording only a CID on chain keeps transactions small while still committing to the full content.",
    "Anyone can recompute a CID from the bytes, so nobody needs to trust the party that published it.",
    "A peer that serves blocks does not need to know what they mean; it only needs to have them.",
    "Serving every block in the local store lets a node share adapters, receipts and datasets alike.",
    "A short-lived host with a fresh identity is enough to fetch content once and exit.",
]

ETHEREUM = [
    ("What is an Ethereum account?", "An address with a balance and a nonce; contract accounts also hold code and "
                                     "storage."),
    ("What is a nonce?", "A counter of the transactions an account has sent; each transaction must use the next "
                         "value."),
    ("What does gas measure?", "The computation and storage a transaction uses; the sender pays for it in ETH."),
    ("Why does a transaction need a gas limit?", "It caps how much work the transaction may do, so a loop cannot "
                                                 "run forever at the sender's expense."),
    ("What happens when a transaction reverts?", "Its state changes are undone, but the gas used up to that point "
                                                 "is still paid."),
    ("What is a smart contract?", "Code stored at an address that runs when a transaction or another contract "
                                  "calls it."),
    ("What is an ERC-20 token?", "A contract with a standard interface for balances, transfers and allowances."),
    ("What do decimals mean for a token?", "How many digits of a token's base units form one whole token; 18 is "
                                           "common."),
    ("Why read a token's symbol from its contract?", "Because the contract is the authority; a hard-coded symbol "
                                                     "can be wrong on another network."),
    ("What is an allowance?", "The amount a token holder lets another address move on its behalf with "
                              "transferFrom."),
    ("Why approve before depositing?", "The receiving contract pulls the tokens with transferFrom, which needs "
                                       "an allowance."),
    ("What is an event log?", "Data a contract emits during a transaction; it is cheap to write and indexers "
                              "read it."),
    ("Why do indexers rely on events?", "Events record what happened in order, so an indexer can rebuild state "
                                        "without reading every storage slot."),
    ("What is a chain id?", "A number that identifies a network and is part of every signed transaction."),
    ("Why check the chain id before sending?", "A deployment file for one network points at addresses that mean "
                                               "nothing on another."),
    ("What is Anvil?", "A local Ethereum node from the Foundry toolkit, used for development and tests."),
    ("Why test contracts against a real node?", "It runs the same EVM, gas accounting and receipts that "
                                                "production uses."),
    ("What is EIP-712?", "A standard for signing typed structured data so users can see what they sign."),
    ("What is a domain separator?", "A hash of the contract name, version, chain id and address that binds a "
                                    "signature to one contract."),
    ("Why include a deadline in a signed request?", "So that an old signature cannot be used long after the "
                                                    "signer meant it."),
    ("What is a voucher in a payment channel?", "A signed statement of the total amount the payer owes so far; "
                                                "the latest one supersedes the rest."),
    ("Why make vouchers cumulative?", "The payee only needs to keep the latest voucher, and replaying an old one "
                                      "gains nothing."),
    ("What is a Merkle tree?", "A tree of hashes where each parent hashes its children; the root commits to every "
                               "leaf."),
    ("What is a Merkle proof?", "The sibling hashes on the path from a leaf to the root; with them anyone can "
                                "recompute the root."),
    ("Why pay recipients by pull rather than push?", "Each recipient claims its own credit, so a batch does not "
                                                     "pay gas for hundreds of transfers."),
    ("What does settling in batches save?", "Fixed costs such as signature checks and storage writes are shared by "
                                            "many receipts."),
    ("What is a receipt in an inference network?", "A signed record of one served request: who asked, which "
                                                   "adapter, how many tokens and the price."),
    ("Why publish receipts off chain?", "Storing every receipt on chain would be expensive; a root on chain "
                                        "commits to all of them."),
    ("What is a storage slot?", "A 32-byte word of contract storage; writing a new non-zero slot is one of the "
                                "most expensive operations."),
    ("Why pack two values into one slot?", "Reading and writing one slot instead of two saves gas on every "
                                           "update."),
    ("What is a custom error in Solidity?", "A named error type that reverts with a selector and arguments, "
                                            "cheaper than a revert string."),
    ("What is a fuzz test?", "A test that runs a property with many generated inputs to find cases the author did "
                             "not think of."),
    ("What is an invariant test?", "A test that calls contract functions in random sequences and checks that a "
                                   "property always holds."),
    ("What does estimate_gas tell a client?", "Roughly how much gas a call will use, and whether it would revert "
                                              "right now."),
    ("Why check the balance before sending?", "An account without enough ETH for gas gets a clear message instead "
                                              "of a failed send."),
    ("What is a block number used for?", "It orders events and lets a client scan logs from a known starting "
                                         "point."),
    ("Why record the deployment block?", "Log scans can start there instead of at the genesis block."),
    ("What is an externally owned account?", "An account controlled by a private key rather than by contract "
                                             "code."),
    ("How is an address derived from a key?", "From the last 20 bytes of the Keccak-256 hash of the public key."),
    ("What is a checksum address?", "An address whose letter case encodes a checksum, catching most typing "
                                    "mistakes."),
    ("What is a keystore file?", "A private key encrypted with a password, in a JSON format that wallets "
                                 "understand."),
    ("Why never log a private key?", "Anyone who reads the log could spend everything the account holds."),
    ("What is a replacement transaction?", "A new transaction with the same nonce and higher fees that takes the "
                                           "place of a stuck one."),
    ("What is EIP-1559?", "A fee market with a base fee that is burned and a priority fee that goes to the block "
                          "producer."),
    ("Why cap the max fee per gas?", "So that a fee spike cannot make one settlement cost far more than expected."),
    ("What is a registry contract?", "A contract that records entities, such as nodes or adapters, with their "
                                     "owners and settings."),
    ("Why store a CID on chain instead of the data?", "A CID is a few dozen bytes and still commits to the "
                                                      "whole content."),
    ("What is a curator in a Datanet?", "The account that reviews contributions and publishes versions of the "
                                        "Datanet."),
    ("Why publish Datanet versions in order?", "Each version number is the count plus one, so a replayed or "
                                               "racing publish reverts."),
    ("What does a version record on chain?", "The manifest CID, the total weight and each accepted "
                                             "contribution's weight."),
    ("Why must weights sum to the total?", "The contract checks it, so nobody can claim a total that the parts "
                                           "do not add up to."),
    ("What is a protocol fee?", "A share of each settled amount, in basis points, paid to the protocol's "
                                "recipient."),
    ("What is a basis point?", "One hundredth of a percent; 10,000 basis points make 100 percent."),
    ("How are credits rounded?", "Integer division leaves a remainder, which must go to a named recipient so no "
                                 "wei is lost."),
    ("What is a lane in a settlement escrow?", "A balance held for one requester and one node, debited only by "
                                               "that requester's vouchers."),
    ("Why fund each node separately?", "One storage slot per lane keeps settlement to one write per requester."),
    ("What does a devnet seed do?", "It deploys contracts, funds demo accounts and creates sample data so that "
                                    "a demo works at once."),
    ("Why use a fixed mnemonic on a devnet?", "Every run gets the same accounts, so scripts and tests can refer "
                                              "to them."),
    ("Is a devnet key safe to use on mainnet?", "No: Anvil's mnemonic is public, and anything sent to its "
                                                "accounts on a real network can be taken."),
    ("What does a transaction receipt contain?", "The status, the gas used, the logs emitted and the block it "
                                                 "was included in."),
    ("Why wait for a receipt?", "Sending only queues a transaction; the receipt says whether it ran and "
                                "succeeded."),
    ("What is a view function?", "A function that reads state without changing it; calling it costs no gas off "
                                 "chain."),
    ("What is reentrancy?", "A contract calling back into the caller before the first call has finished "
                            "updating its state."),
    ("How do contracts avoid reentrancy bugs?", "Update state before external calls, or use a guard that "
                                                "blocks nested calls."),
    ("What is an owner role in a contract?", "An address allowed to call administrative functions, such as "
                                             "minting on a test token."),
    ("What does minting a token do?", "It creates new units and adds them to an account's balance and to the "
                                      "total supply."),
    ("Why does settlement check signatures on chain?", "So that a node cannot debit a requester without the "
                                                       "requester's signed voucher."),
    ("What stops a node from claiming more than it served?", "The voucher caps the debit, and receipts are public "
                                                             "for anyone to audit."),
    ("Why are adapter weights in basis points?", "An adapter trained on several Datanets splits the data share "
                                                 "among them by fixed fractions."),
]

ATTRIBUTION = [
    "Attribution answers a simple question: when a model earns money, who made that possible?",
    "In this network an inference payment is split between the adapter's author, the node operator and data "
    "contributors.",
    "The protocol takes its fee first, then the author and operator shares are applied to what remains.",
    "The contributors' share is divided among the Datanets an adapter names, by the weights its author registered.",
    "Within one Datanet, each contributor's part follows the weights of the latest published version.",
    "A contribution's weight is the number of tokens in its rows that are not duplicates.",
    "Weights come from content, so anyone holding the rows can recompute them and check the chain.",
    "A declared size is only a claim; a weight recomputed from content is a fact anyone can check.",
    "Duplicate rows earn nothing, which removes the incentive to pad a contribution with copies.",
    "An exact duplicate is a row with the same CID as a row that came earlier in the version.",
    "A near duplicate is a row whose word pairs overlap heavily with an earlier row.",
    "MinHash estimates how similar two sets are without comparing every element of both.",
    "Locality-sensitive hashing puts similar signatures into the same bucket, so few pairs need comparing.",
    "The similarity threshold decides how much editing turns a copy into a new row.",
    "Lower-casing text and splitting it into words before comparing ignores trivial differences in form.",
    "Rows are compared in contribution order, so the first contributor of a text keeps its credit.",
    "A curator reviews each contribution before it counts, and can reject spam or off-topic data.",
    "A rejected contribution stays on chain with its status, so the decision is visible to everyone.",
    "Review reasons help contributors understand what the curator wants in future contributions.",
    "A version manifest lists every accepted contribution, its rows, its token counts and its weight.",
    "The manifest names its tokenizer and dedup parameters so later readers recompute with the same rules.",
    "Publishing a version puts its manifest CID, total weight and per-contribution weights on chain.",
    "Verifying a version means fetching every row, hashing it, recounting tokens and re-running dedup.",
    "If a curator publishes weights that the content does not support, verification names the difference.",
    "An adapter registry entry links an adapter's CID to its author, price and Datanets.",
    "When a node serves a request, it computes the attribution vector from the chain, not from the request.",
    "A receipt lists who is owed what for one request, signed by the node that served it.",
    "Batches of receipts settle on chain, and each recipient claims its total with a Merkle proof.",
    "Small payments add up: a contributor may earn fractions of a cent per request over many requests.",
    "Rounding remainders go to the operator, so a batch pays out exactly what requesters were debited.",
    "A contributor can list its payouts from chain events alone, without asking any node.",
    "Claims are idempotent in effect: a second claim for the same batch reverts.",
    "Attribution by data volume is a starting point; influence-based methods can refine it later.",
    "Training data influence is hard to measure exactly, but counting useful tokens is simple and auditable.",
    "A transparent rule that everyone can check beats a precise rule that nobody can verify.",
    "Licenses matter: each contribution states the license under which its rows may be used.",
    "CC0 waives rights as far as the law allows, so data under it can be used without conditions.",
    "CC-BY requires credit to the author, which a manifest can provide by naming the contributor.",
    "A Datanet's metadata, such as its name and purpose, is itself content with a CID.",
    "Anyone can create a Datanet; the creator becomes its curator.",
    "A good Datanet has a clear scope, so contributors know what belongs in it.",
    "Short factual notes make good demo data because they are easy to read and check.",
    "A question and answer pair is stored as a prompt and a completion, and weighed as both together.",
    "Markdown contributions are split at blank lines, and fenced code blocks stay whole.",
    "Plain text contributions are split into paragraphs at blank lines.",
    "JSONL contributions hold one JSON object per line, either a text or a prompt and completion.",
    "A contribution file that is empty, binary or not UTF-8 is refused before anything is sent on chain.",
    "Size limits keep a single contribution from overwhelming a curator or a node's disk.",
    "Every row of a contribution is its own block, so a manifest can point at rows one by one.",
    "A node that holds a version's blocks can serve them to any other node that asks.",
    "Pulling a version from a peer checks every block against its CID before storing it.",
    "A peer that sends a tampered row is caught at once: the bytes do not hash to the CID.",
    "After pulling, a node verifies the whole version against the chain before trusting its weights.",
    "The model factory trains on a specific version, so a model's data can always be identified.",
    "Versions are append-only: a new version never rewrites an old one.",
    "A later version can drop a contribution, and payouts then follow the new weights.",
    "Payouts already settled are not affected by later versions; only new requests use the new weights.",
    "Contributors with more useful tokens get a larger share, and that share is visible on chain.",
    "Operators earn for the compute they provide, whichever adapter a request uses.",
    "Authors earn for the adapter, which represents the training work and the choice of data.",
    "Requesters pay per token, and the price is the adapter's price plus the node's price.",
    "A requester signs each request with a price cap, so a node cannot charge more than agreed.",
    "A requester funds a lane to a node in advance, and vouchers let the node draw on it.",
    "If a node stops settling, the requester's unspent deposit is still in its lane.",
    "Every part of the payment path can be audited: receipts, batches, weights and manifests are public.",
    "A demo Datanet shows the whole loop: contribute, review, publish, verify, train, serve and pay.",
    "Contributors do not need to run a node; they need a key, some gas and a file.",
    "Curators need judgement more than hardware: reviewing is reading.",
    "Verification needs no permission: anyone with the CIDs and a chain connection can do it.",
    "The value of a Datanet grows with the quality of its rows, not with the number of its rows.",
]

# A lightly edited copy of a LoRA note: a near duplicate (similarity above the 0.60 threshold) that carries no
# weight, flagged when the curator reviews it.
NEAR_DUPLICATE = ("Because adapters are small, one server can keep hundreds of them in memory beside one copy of the "
                  "base model.")

SPAM = [
    "BEST DEAL!!! Buy cheap tokens now, limited offer, click the link in my profile.",
    "Earn 1000% guaranteed returns, send ETH to this address and receive double back.",
    "Free airdrop for everyone, just share your seed phrase to claim it.",
]


def _jsonl(records: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


# (contributor index in ROLES["contributors"], file name, bytes, license, accept, review reason)
CONTRIBUTIONS = [
    (0, "lora-notes.md", ("# Notes on LoRA\n\n" + "\n\n".join(LORA) + "\n").encode("utf-8"), "CC0-1.0", True,
     "clear notes on LoRA, new to this Datanet"),
    (1, "content-addressing.jsonl", _jsonl([{"text": t} for t in IPFS]), "CC0-1.0", True,
     "content addressing notes, no duplicates"),
    (2, "ethereum-qa.jsonl", _jsonl([{"prompt": q, "completion": a} for q, a in ETHEREUM]
                                    + [{"text": NEAR_DUPLICATE}]), "CC0-1.0", True,
     "good questions and answers; the one near duplicate of a LoRA note carries no weight"),
    (1, "attribution.txt", ("\n\n".join(ATTRIBUTION) + "\n").encode("utf-8"), "CC-BY-4.0", True,
     "explains attribution well"),
    (2, "offers.txt", ("\n\n".join(SPAM) + "\n").encode("utf-8"), "CC0-1.0", False,
     "spam: advertising and scams, nothing about the Datanet's subject"),
]
