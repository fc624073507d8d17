// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Test} from "./Test.sol";
import {Credits} from "./Credits.sol";
import {OpenLoRAToken} from "../../src/OpenLoRAToken.sol";
import {Settlement} from "../../src/Settlement.sol";

/// Shared set-up for Settlement tests: a token, a Settlement (2.5% protocol fee, 1 day withdrawal delay),
/// requesters with private keys (funded and deposited), and helpers that sign vouchers and build credits.
abstract contract SettlementFixture is Test {
    uint256 internal constant FEE_BPS = 250;
    uint256 internal constant DELAY = 1 days;
    address internal constant PROTOCOL = address(0xFEE);
    address internal constant NODE = address(0x0D0D);

    OpenLoRAToken internal token;
    Settlement internal settlement;

    function _deploy() internal {
        token = new OpenLoRAToken(address(this));
        settlement = new Settlement(token, PROTOCOL, FEE_BPS, DELAY);
    }

    function _fund(uint256 pk, uint256 amount) internal returns (address who) {
        who = vm.addr(pk);
        token.mint(who, amount);
        vm.startPrank(who);
        token.approve(address(settlement), amount);
        settlement.deposit(NODE, amount);
        vm.stopPrank();
    }

    function _debit(uint256 pk, address node, uint256 cap, uint256 amount)
        internal
        view
        returns (Settlement.Debit memory d)
    {
        address requester = vm.addr(pk);
        (bytes32 r, bytes32 vs) = _signCompact(pk, settlement.voucherDigest(requester, node, cap));
        d = Settlement.Debit({requester: requester, cumulativeCap: cap, amount: amount, r: r, vs: vs});
    }

    /// EIP-2098 compact signature built from vm.sign (independent of forge's signCompact).
    function _signCompact(uint256 pk, bytes32 digest) internal pure returns (bytes32 r, bytes32 vs) {
        (uint8 v, bytes32 r_, bytes32 s) = vm.sign(pk, digest);
        r = r_;
        vs = bytes32(uint256(s) | (v == 28 ? uint256(1) << 255 : 0));
    }

    function _header(bytes32 root) internal pure returns (Settlement.BatchHeader memory) {
        return Settlement.BatchHeader({receiptsRoot: root, receiptCount: 1, receiptsUri: "ipfs://bafyreceipts"});
    }

    function _one(Settlement.Debit memory d) internal pure returns (Settlement.Debit[] memory ds) {
        ds = new Settlement.Debit[](1);
        ds[0] = d;
    }

    /// Credits for `total` split equally among `recipients` (remainder to the last one) plus the protocol fee,
    /// sorted by recipient.
    function _credits(uint256 total, address[] memory recipients) internal pure returns (bytes32[] memory words) {
        uint256 fee = total * FEE_BPS / 10_000;
        uint256 rest = total - fee;
        uint256 n = recipients.length;
        uint256 each = rest / n;
        bytes32[] memory tmp = new bytes32[](n + 1);
        uint256 k;
        for (uint256 i; i < n; ++i) {
            uint256 amount = i == n - 1 ? rest - each * (n - 1) : each;
            if (amount > 0) tmp[k++] = Credits.word(recipients[i], amount);
        }
        if (fee > 0) tmp[k++] = Credits.word(PROTOCOL, fee);
        words = new bytes32[](k);
        for (uint256 i; i < k; ++i) {
            words[i] = tmp[i];
        }
        Credits.sort(words);
    }

    function _addrs(address a, address b) internal pure returns (address[] memory out) {
        out = new address[](2);
        out[0] = a;
        out[1] = b;
    }
}
