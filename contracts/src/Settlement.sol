// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// @title Settlement: requester escrow, batched settlement of inference receipts, and pull payouts.
/// @notice Requesters deposit the payment token (any ERC-20 fixed at deployment) into a *lane* per node they use
///         (a one-way payment channel: requester -> node; one storage slot holds the lane's balance and its
///         cumulative debit, which is what makes a settlement cost one storage write per requester). A node settles
///         a batch of receipts in one transaction:
///         - `receiptsRoot`: the Merkle root of the batch's receipts, published at `receiptsUri` (auditable off chain);
///         - debits: per requester, an amount taken from its lane to this node, backed by the requester's EIP-712
///           *voucher*, a cumulative cap the requester signed for this node; the lane keeps the cumulative amount
///           debited and never lets it pass the cap, so one signature check covers any number of requests;
///         - credits: (recipient, amount) packed into one word each, recipients strictly increasing; the contract
///           checks sum(credits) == sum(debits) and that the protocol recipient gets exactly floor(total * bps /
///           10,000) (the rounding remainder stays with the other recipients: no wei is lost or created), then
///           stores only the Merkle root of the credits. Recipients claim by pull with a proof, once per batch.
///         What it cannot check (that each receipt is real and priced right, the split among contributors, author
///         and operator) is auditable from the published receipts.
/// @dev Credit word: bits 255..96 recipient address, bits 95..0 amount. Credit leaf: keccak256(word) (a 32-byte
///      preimage, so a leaf can never be confused with an inner node). Inner node: commutative keccak of its two
///      children. Tree: leaves in credit order, pairs combined level by level, an odd last node carried up as is.
contract Settlement is EIP712 {
    using SafeERC20 for IERC20;

    uint256 public constant BPS = 10_000;
    uint256 public constant MAX_PROTOCOL_FEE_BPS = 5_000;
    uint256 public constant MAX_WITHDRAWAL_DELAY = 30 days;

    bytes32 public constant REQUEST_TYPEHASH = keccak256(
        "Request(address requester,address node,bytes32 adapter,bytes32 promptHash,uint256 maxTokens,uint256 maxPrice,uint256 nonce,uint256 deadline)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(address requester,address node,uint256 cumulativeCap)");

    /// A signed inference request (verified by nodes before any compute; exposed here so that anyone can check).
    struct Request {
        address requester;
        address node;
        bytes32 adapter; // keccak256 of the adapter's CID string (AdapterRegistry id)
        bytes32 promptHash; // keccak256 of the canonical JSON of prompt + sampling params
        uint256 maxTokens;
        uint256 maxPrice;
        uint256 nonce;
        uint256 deadline;
    }

    /// One requester debit in a batch: `amount` now, under the voucher cap `cumulativeCap` signed as (r, vs)
    /// (EIP-2098 compact signature) for (requester, node = msg.sender).
    struct Debit {
        address requester;
        uint256 cumulativeCap;
        uint256 amount;
        bytes32 r;
        bytes32 vs;
    }

    /// What a batch publishes: the receipts' Merkle root, how many receipts, where they are published.
    struct BatchHeader {
        bytes32 receiptsRoot;
        uint256 receiptCount;
        string receiptsUri;
    }

    struct Withdrawal {
        uint128 amount;
        uint64 unlockAt;
    }

    struct ClaimItem {
        bytes32 batchId;
        uint96 amount;
        bytes32[] proof;
    }

    IERC20 public immutable token;
    address public immutable protocolRecipient;
    uint256 public immutable protocolFeeBps;
    uint256 public immutable withdrawalDelay;

    /// A requester's escrow for one node: what is left to spend there, and what was debited there in total.
    struct Lane {
        uint128 balance;
        uint128 debited;
    }

    mapping(address requester => mapping(address node => Lane)) public lanes;
    mapping(address requester => mapping(address node => Withdrawal)) public pendingWithdrawal;
    mapping(bytes32 batchId => bytes32) public creditsRootOf;
    mapping(bytes32 batchId => mapping(address recipient => bool)) public claimed;

    event Deposited(address indexed requester, address indexed node, address from, uint256 amount);
    event WithdrawalRequested(address indexed requester, address indexed node, uint256 amount, uint256 unlockAt);
    event WithdrawalCancelled(address indexed requester, address indexed node);
    event Withdrawn(address indexed requester, address indexed node, uint256 amount);
    event BatchSettled(
        bytes32 indexed batchId,
        address indexed node,
        bytes32 receiptsRoot,
        bytes32 creditsRoot,
        uint256 total,
        uint256 protocolFee,
        uint256 receiptCount,
        string receiptsUri
    );
    event Claimed(bytes32 indexed batchId, address indexed recipient, uint256 amount);

    error ZeroAddress();
    error ZeroAmount();
    error FeeTooHigh(uint256 bps);
    error DelayTooLong(uint256 delay);
    error InsufficientBalance(address requester, uint256 needed, uint256 available);
    error AmountTooLarge(uint256 amount);
    error NoPendingWithdrawal();
    error WithdrawalLocked(uint256 unlockAt);
    error EmptyBatch();
    error BatchAlreadySettled(bytes32 batchId);
    error ZeroDebit(uint256 index);
    error BadVoucherSignature(address requester);
    error VoucherCapExceeded(address requester, uint256 cumulative, uint256 cap);
    error CreditsNotSorted(uint256 index);
    error ZeroCredit(uint256 index);
    error ProtocolFeeMismatch(uint256 expected, uint256 credited);
    error CreditsMismatch(uint256 credits, uint256 debits);
    error UnknownBatch(bytes32 batchId);
    error AlreadyClaimed(bytes32 batchId, address recipient);
    error InvalidProof();

    constructor(IERC20 token_, address protocolRecipient_, uint256 protocolFeeBps_, uint256 withdrawalDelay_)
        EIP712("OpenLoRA", "1")
    {
        if (address(token_) == address(0) || protocolRecipient_ == address(0)) revert ZeroAddress();
        if (protocolFeeBps_ > MAX_PROTOCOL_FEE_BPS) revert FeeTooHigh(protocolFeeBps_);
        if (withdrawalDelay_ > MAX_WITHDRAWAL_DELAY) revert DelayTooLong(withdrawalDelay_);
        token = token_;
        protocolRecipient = protocolRecipient_;
        protocolFeeBps = protocolFeeBps_;
        withdrawalDelay = withdrawalDelay_;
    }

    // ---- requester escrow ----------------------------------------------------------------------------------

    /// @notice Deposit `amount` into the caller's lane to `node` (needs a token allowance).
    function deposit(address node, uint256 amount) external {
        _deposit(msg.sender, node, amount);
    }

    /// @notice Deposit `amount` into `requester`'s lane to `node`, paid by the caller.
    function depositFor(address requester, address node, uint256 amount) external {
        _deposit(requester, node, amount);
    }

    /// @notice Deposit with an EIP-2612 permit instead of a prior approve (a permit already used is tolerated).
    function depositWithPermit(address node, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
    {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(msg.sender, node, amount);
    }

    /// @notice Announce a withdrawal from the lane to `node`; it can be executed after `withdrawalDelay`. Until
    ///         then the funds remain debitable by settlements of requests already served. A new announcement
    ///         replaces the previous one.
    function requestWithdrawal(address node, uint256 amount) external {
        if (amount == 0) revert ZeroAmount();
        uint256 bal = lanes[msg.sender][node].balance;
        if (amount > bal) revert InsufficientBalance(msg.sender, amount, bal);
        uint256 unlockAt = block.timestamp + withdrawalDelay;
        pendingWithdrawal[msg.sender][node] = Withdrawal(uint128(amount), uint64(unlockAt));
        emit WithdrawalRequested(msg.sender, node, amount, unlockAt);
    }

    function cancelWithdrawal(address node) external {
        if (pendingWithdrawal[msg.sender][node].amount == 0) revert NoPendingWithdrawal();
        delete pendingWithdrawal[msg.sender][node];
        emit WithdrawalCancelled(msg.sender, node);
    }

    /// @notice Execute the announced withdrawal from the lane to `node`: pays min(announced, current balance).
    function withdraw(address node) external returns (uint256 amount) {
        Withdrawal memory w = pendingWithdrawal[msg.sender][node];
        if (w.amount == 0) revert NoPendingWithdrawal();
        if (block.timestamp < w.unlockAt) revert WithdrawalLocked(w.unlockAt);
        Lane storage lane = lanes[msg.sender][node];
        uint256 bal = lane.balance;
        amount = w.amount < bal ? w.amount : bal;
        delete pendingWithdrawal[msg.sender][node];
        lane.balance = uint128(bal - amount);
        emit Withdrawn(msg.sender, node, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice What `requester` can still be debited by `node`.
    function balanceOf(address requester, address node) external view returns (uint256) {
        return lanes[requester][node].balance;
    }

    /// @notice What `node` has debited from `requester` in total (the cumulative that vouchers cap).
    function debited(address requester, address node) external view returns (uint256) {
        return lanes[requester][node].debited;
    }

    // ---- settlement ----------------------------------------------------------------------------------------

    /// @notice Settle a batch of receipts served by the caller (the node). See the contract notice for the rules.
    /// @return batchId keccak256(abi.encode(node, receiptsRoot)): a batch can be settled once only.
    function settleBatch(BatchHeader calldata header, Debit[] calldata debits, bytes32[] calldata credits)
        external
        returns (bytes32 batchId)
    {
        batchId = keccak256(abi.encode(msg.sender, header.receiptsRoot));
        if (creditsRootOf[batchId] != bytes32(0)) revert BatchAlreadySettled(batchId);
        if (header.receiptCount == 0 || debits.length == 0 || credits.length == 0) revert EmptyBatch();
        uint256 total = _applyDebits(debits);
        uint256 fee = total * protocolFeeBps / BPS;
        bytes32 root = _checkCredits(credits, total, fee);
        creditsRootOf[batchId] = root;
        _emitSettled(batchId, header, root, total, fee);
    }

    function _emitSettled(bytes32 batchId, BatchHeader calldata h, bytes32 root, uint256 total, uint256 fee) private {
        emit BatchSettled(batchId, msg.sender, h.receiptsRoot, root, total, fee, h.receiptCount, h.receiptsUri);
    }

    function _applyDebits(Debit[] calldata debits) private returns (uint256 total) {
        bytes32 domain = _domainSeparatorV4();
        for (uint256 i; i < debits.length; ++i) {
            Debit calldata d = debits[i];
            address requester = d.requester;
            uint256 amount = d.amount;
            if (amount == 0) revert ZeroDebit(i);
            Lane storage lane = lanes[requester][msg.sender];
            Lane memory l = lane;
            uint256 cumulative = uint256(l.debited) + amount;
            if (cumulative > d.cumulativeCap) revert VoucherCapExceeded(requester, cumulative, d.cumulativeCap);
            if (l.balance < amount) revert InsufficientBalance(requester, amount, l.balance);
            if (cumulative > type(uint128).max) revert AmountTooLarge(cumulative);
            bytes32 digest = MessageHashUtils.toTypedDataHash(
                domain, keccak256(abi.encode(VOUCHER_TYPEHASH, requester, msg.sender, d.cumulativeCap))
            );
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, d.r, d.vs);
            if (err != ECDSA.RecoverError.NoError || signer != requester) revert BadVoucherSignature(requester);
            (lane.balance, lane.debited) = (uint128(l.balance - amount), uint128(cumulative));
            total += amount;
        }
    }

    function _checkCredits(bytes32[] calldata credits, uint256 total, uint256 fee) private view returns (bytes32) {
        uint256 n = credits.length;
        bytes32[] memory level = new bytes32[](n);
        uint256 sum;
        uint256 prev; // previous recipient as an integer; starting at 0 also rules out the zero address
        bool feePaid = fee == 0;
        uint256 protocol = uint160(protocolRecipient);
        for (uint256 i; i < n;) {
            uint256 word;
            assembly ("memory-safe") {
                word := calldataload(add(credits.offset, shl(5, i)))
                mstore(0x00, word)
                mstore(add(add(level, 0x20), shl(5, i)), keccak256(0x00, 0x20)) // leaf = keccak256(word)
            }
            uint256 recipient = word >> 96;
            uint256 amount = word & type(uint96).max;
            if (recipient <= prev) revert CreditsNotSorted(i);
            if (amount == 0) revert ZeroCredit(i);
            if (recipient == protocol) {
                if (amount != fee) revert ProtocolFeeMismatch(fee, amount);
                feePaid = true;
            }
            prev = recipient;
            unchecked {
                sum += amount; // at most n * 2**96: cannot overflow
                ++i;
            }
        }
        if (!feePaid) revert ProtocolFeeMismatch(fee, 0);
        if (sum != total) revert CreditsMismatch(sum, total);
        return _root(level);
    }

    // ---- claims --------------------------------------------------------------------------------------------

    /// @notice Pay `recipient` its credit `amount` from batch `batchId` (anyone may call; funds go to recipient).
    function claim(bytes32 batchId, address recipient, uint96 amount, bytes32[] calldata proof) external {
        _markClaimed(batchId, recipient, amount, proof);
        token.safeTransfer(recipient, amount);
    }

    /// @notice Claim several batches' credits for `recipient` in one transfer.
    function claimMany(address recipient, ClaimItem[] calldata items) external returns (uint256 total) {
        for (uint256 i; i < items.length; ++i) {
            _markClaimed(items[i].batchId, recipient, items[i].amount, items[i].proof);
            total += items[i].amount;
        }
        if (total == 0) revert ZeroAmount();
        token.safeTransfer(recipient, total);
    }

    function _markClaimed(bytes32 batchId, address recipient, uint96 amount, bytes32[] calldata proof) private {
        bytes32 root = creditsRootOf[batchId];
        if (root == bytes32(0)) revert UnknownBatch(batchId);
        if (claimed[batchId][recipient]) revert AlreadyClaimed(batchId, recipient);
        bytes32 leaf = creditLeaf(recipient, amount);
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        claimed[batchId][recipient] = true;
        emit Claimed(batchId, recipient, amount);
    }

    // ---- views: digests, leaves, roots ---------------------------------------------------------------------

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function voucherDigest(address requester, address node, uint256 cumulativeCap) external view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, requester, node, cumulativeCap)));
    }

    function requestDigest(Request calldata q) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(REQUEST_TYPEHASH, q)));
    }

    /// @notice True when `signature` (65 bytes, or 64-byte compact) over `q` is by `q.requester`.
    function verifyRequest(Request calldata q, bytes calldata signature) external view returns (bool) {
        bytes32 digest = requestDigest(q);
        address signer;
        ECDSA.RecoverError err;
        if (signature.length == 64) {
            (signer, err,) = ECDSA.tryRecover(digest, bytes32(signature[:32]), bytes32(signature[32:]));
        } else {
            (signer, err,) = ECDSA.tryRecoverCalldata(digest, signature);
        }
        return err == ECDSA.RecoverError.NoError && signer == q.requester;
    }

    function creditWord(address recipient, uint96 amount) public pure returns (bytes32) {
        return bytes32((uint256(uint160(recipient)) << 96) | amount);
    }

    function creditLeaf(address recipient, uint96 amount) public pure returns (bytes32) {
        return _leaf(uint256(creditWord(recipient, amount)));
    }

    /// @notice The Merkle root of a credit list, exactly as settleBatch stores it (no validity checks).
    function creditsRoot(bytes32[] calldata credits) external pure returns (bytes32) {
        bytes32[] memory level = new bytes32[](credits.length);
        for (uint256 i; i < credits.length; ++i) {
            level[i] = _leaf(uint256(credits[i]));
        }
        return _root(level);
    }

    function _leaf(uint256 word) private pure returns (bytes32 h) {
        assembly ("memory-safe") {
            mstore(0x00, word)
            h := keccak256(0x00, 0x20)
        }
    }

    /// In place: pairs combined level by level (sorted-pair keccak, as OpenZeppelin's commutativeKeccak256),
    /// an odd last node carried up unchanged. `level` must not be empty.
    function _root(bytes32[] memory level) private pure returns (bytes32 root) {
        assembly ("memory-safe") {
            let base := add(level, 0x20)
            for { let n := mload(level) } gt(n, 1) {} {
                let m := 0
                for { let i := 0 } lt(add(i, 1), n) { i := add(i, 2) } {
                    let a := mload(add(base, shl(5, i)))
                    let b := mload(add(base, shl(5, add(i, 1))))
                    if gt(a, b) {
                        let t := a
                        a := b
                        b := t
                    }
                    mstore(0x00, a)
                    mstore(0x20, b)
                    mstore(add(base, shl(5, m)), keccak256(0x00, 0x40))
                    m := add(m, 1)
                }
                if and(n, 1) {
                    mstore(add(base, shl(5, m)), mload(add(base, shl(5, sub(n, 1)))))
                    m := add(m, 1)
                }
                n := m
            }
            root := mload(base)
        }
    }

    function _deposit(address requester, address node, uint256 amount) private {
        if (requester == address(0) || node == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = token.balanceOf(address(this)) - before;
        Lane storage lane = lanes[requester][node];
        uint256 newBalance = lane.balance + received;
        if (newBalance > type(uint128).max) revert AmountTooLarge(newBalance);
        lane.balance = uint128(newBalance);
        emit Deposited(requester, node, msg.sender, received);
    }
}
