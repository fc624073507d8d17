// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {Credits} from "./utils/Credits.sol";
import {SettlementFixture} from "./utils/SettlementFixture.sol";
import {OpenLoRAToken} from "../src/OpenLoRAToken.sol";
import {Settlement} from "../src/Settlement.sol";

/// Drives Settlement with random deposits, withdrawals, settlements, over-cap and replayed settlements, and
/// claims (including second claims), keeping ghost totals for the invariants.
contract SettlementHandler is Test {
    Settlement public immutable s;
    OpenLoRAToken public immutable token;
    address public immutable protocol;
    uint256 public immutable feeBps;

    uint256[3] internal pks = [uint256(0xA1), 0xA2, 0xA3];
    address[2] internal nodes = [address(0xD1), address(0xD2)];
    address[4] internal recipients = [address(0x5001), address(0x5002), address(0x5003), address(0x5004)];

    uint256 public deposited;
    uint256 public withdrawn;
    uint256 public claimedTotal;
    uint256 public credited;
    bool public replayAccepted;
    bool public overCapAccepted;
    bool public doubleClaimAccepted;
    mapping(address => mapping(address => uint256)) public maxSignedCap;

    struct Batch {
        address node;
        bytes32 receiptsRoot;
        bytes32 id;
        bytes32[] words;
    }

    Batch[] internal batches;
    mapping(bytes32 => mapping(uint256 => bool)) internal claimedIdx;
    uint256 internal counter;

    constructor(Settlement s_, OpenLoRAToken token_, address protocol_, uint256 feeBps_) {
        s = s_;
        token = token_;
        protocol = protocol_;
        feeBps = feeBps_;
    }

    function requester(uint256 i) public view returns (address) {
        return vm.addr(pks[i % 3]);
    }

    function deposit(uint256 who, uint256 nodeSeed, uint256 amount) external {
        address r = requester(who);
        amount = bound(amount, 1, 1_000_000);
        token.mint(r, amount);
        vm.startPrank(r);
        token.approve(address(s), amount);
        s.deposit(nodes[nodeSeed % 2], amount);
        vm.stopPrank();
        deposited += amount;
    }

    function requestWithdrawal(uint256 who, uint256 nodeSeed, uint256 amount) external {
        address r = requester(who);
        address node = nodes[nodeSeed % 2];
        uint256 bal = s.balanceOf(r, node);
        if (bal == 0) return;
        vm.prank(r);
        s.requestWithdrawal(node, bound(amount, 1, bal));
    }

    function withdraw(uint256 who, uint256 nodeSeed, uint256 wait) external {
        address r = requester(who);
        vm.warp(block.timestamp + bound(wait, 0, 2 days));
        vm.prank(r);
        try s.withdraw(nodes[nodeSeed % 2]) returns (uint256 amount) {
            withdrawn += amount;
        } catch {}
    }

    function _debit(uint256 pk, address node, uint256 cap, uint256 amount) internal returns (Settlement.Debit[] memory ds) {
        address r = vm.addr(pk);
        (uint8 v, bytes32 rr, bytes32 ss) = vm.sign(pk, s.voucherDigest(r, node, cap));
        if (cap > maxSignedCap[r][node]) maxSignedCap[r][node] = cap;
        ds = new Settlement.Debit[](1);
        ds[0] = Settlement.Debit(r, cap, amount, rr, bytes32(uint256(ss) | (v == 28 ? uint256(1) << 255 : 0)));
    }

    function _words(uint256 total, uint256 seed) internal view returns (bytes32[] memory words) {
        uint256 fee = total * feeBps / 10_000;
        uint256 rest = total - fee;
        uint256 n = seed % 4 + 1;
        bytes32[] memory tmp = new bytes32[](n + 1);
        uint256 k;
        uint256 left = rest;
        for (uint256 i; i < n && left > 0; ++i) {
            uint256 share = i == n - 1 ? left : (rest * ((seed >> (8 * i)) % 100 + 1)) / 400;
            if (share > left) share = left;
            if (share == 0) continue;
            tmp[k++] = Credits.word(recipients[i], share);
            left -= share;
        }
        if (fee > 0) tmp[k++] = Credits.word(protocol, fee);
        words = new bytes32[](k);
        for (uint256 i; i < k; ++i) {
            words[i] = tmp[i];
        }
        Credits.sort(words);
    }

    function settle(uint256 nodeSeed, uint256 who, uint256 amount, uint256 capExtra, uint256 seed) external {
        address node = nodes[nodeSeed % 2];
        address r = requester(who);
        uint256 bal = s.balanceOf(r, node);
        if (bal == 0) return;
        amount = bound(amount, 1, bal);
        uint256 cap = s.debited(r, node) + amount + bound(capExtra, 0, 1000);
        Settlement.Debit[] memory ds = _debit(pks[who % 3], node, cap, amount);
        bytes32[] memory words = _words(amount, seed);
        bytes32 root = keccak256(abi.encode("receipts", ++counter));
        vm.prank(node);
        bytes32 id = s.settleBatch(Settlement.BatchHeader(root, 1, "ipfs://x"), ds, words);
        credited += amount;
        batches.push(Batch(node, root, id, words));
    }

    /// A node tries to debit more than the voucher it holds allows.
    function settleOverCap(uint256 who, uint256 amount) external {
        address node = nodes[0];
        address r = requester(who);
        uint256 bal = s.balanceOf(r, node);
        if (bal < 2) return;
        amount = bound(amount, 2, bal);
        uint256 cap = s.debited(r, node) + amount - 1;
        Settlement.Debit[] memory ds = _debit(pks[who % 3], node, cap, amount);
        bytes32[] memory words = _words(amount, amount);
        vm.prank(node);
        try s.settleBatch(Settlement.BatchHeader(keccak256(abi.encode("over", ++counter)), 1, ""), ds, words) {
            overCapAccepted = true;
        } catch {}
    }

    /// A node re-submits a settled batch's receipts root with a fresh, valid debit.
    function replay(uint256 idx, uint256 who) external {
        if (batches.length == 0) return;
        Batch storage b = batches[idx % batches.length];
        address r = requester(who);
        if (s.balanceOf(r, b.node) == 0) return;
        Settlement.Debit[] memory ds = _debit(pks[who % 3], b.node, s.debited(r, b.node) + 1, 1);
        bytes32[] memory w = new bytes32[](1);
        w[0] = Credits.word(recipients[0], 1);
        vm.prank(b.node);
        try s.settleBatch(Settlement.BatchHeader(b.receiptsRoot, 1, ""), ds, w) {
            replayAccepted = true;
        } catch {}
    }

    function claim(uint256 idx, uint256 j) external {
        if (batches.length == 0) return;
        Batch storage b = batches[idx % batches.length];
        uint256 i = j % b.words.length;
        address who = address(uint160(uint256(b.words[i]) >> 96));
        uint96 amount = uint96(uint256(b.words[i]));
        bytes32[] memory proof = Credits.proof(b.words, i);
        if (claimedIdx[b.id][i]) {
            try s.claim(b.id, who, amount, proof) {
                doubleClaimAccepted = true;
            } catch {}
            return;
        }
        s.claim(b.id, who, amount, proof);
        claimedIdx[b.id][i] = true;
        claimedTotal += amount;
    }

    function sumBalances() external view returns (uint256 sum) {
        for (uint256 i; i < 3; ++i) {
            sum += s.balanceOf(vm.addr(pks[i]), nodes[0]) + s.balanceOf(vm.addr(pks[i]), nodes[1]);
        }
    }

    function debitedWithinSigned() external view returns (bool) {
        for (uint256 i; i < 3; ++i) {
            for (uint256 n; n < 2; ++n) {
                address r = vm.addr(pks[i]);
                if (s.debited(r, nodes[n]) > maxSignedCap[r][nodes[n]]) return false;
            }
        }
        return true;
    }
}

contract SettlementInvariantTest is SettlementFixture {
    SettlementHandler handler;

    function setUp() public {
        _deploy();
        handler = new SettlementHandler(settlement, token, PROTOCOL, FEE_BPS);
        token.transferOwnership(address(handler));
    }

    function targetContracts() public view returns (address[] memory out) {
        out = new address[](1);
        out[0] = address(handler);
    }

    function invariant_tokenBalanceIsDepositsMinusWithdrawalsMinusClaims() public view {
        assertEq(
            token.balanceOf(address(settlement)),
            handler.deposited() - handler.withdrawn() - handler.claimedTotal(),
            "Settlement's token balance"
        );
        assertEq(
            handler.sumBalances() + handler.credited(),
            handler.deposited() - handler.withdrawn(),
            "requester balances + credits"
        );
    }

    function invariant_noRequesterDebitedBeyondSigned() public view {
        assertTrue(handler.debitedWithinSigned(), "debited beyond the signed cap");
        assertFalse(handler.overCapAccepted(), "an over-cap settlement was accepted");
    }

    function invariant_noBatchSettlesTwice() public view {
        assertFalse(handler.replayAccepted(), "a batch settled twice");
    }

    function invariant_claimsNeverExceedCredits() public view {
        assertLe(handler.claimedTotal(), handler.credited(), "claims > credits");
        assertFalse(handler.doubleClaimAccepted(), "a credit was claimed twice");
    }
}
