// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {SettlementFixture} from "./utils/SettlementFixture.sol";
import {Credits} from "./utils/Credits.sol";
import {Settlement} from "../src/Settlement.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";

contract SettlementTest is SettlementFixture {
    uint256 constant PK_A = 0xA11CE;
    uint256 constant PK_B = 0xB0B;
    address alice;
    address bob;
    address constant R1 = address(0x1111);
    address constant R2 = address(0x2222);

    function setUp() public {
        _deploy();
        alice = _fund(PK_A, 1_000_000);
        bob = _fund(PK_B, 1_000_000);
    }

    function _settleSimple(bytes32 root, uint256 amount) internal returns (bytes32 id, bytes32[] memory words) {
        words = _credits(amount, _addrs(R1, R2));
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, amount, amount));
        vm.prank(NODE);
        id = settlement.settleBatch(_header(root), ds, words);
    }

    // ---- constructor -----------------------------------------------------------------------------------------

    function test_constructor_reverts() public {
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(IERC20(address(0)), PROTOCOL, 1, 1);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        new Settlement(token, address(0), 1, 1);
        vm.expectRevert(abi.encodeWithSelector(Settlement.FeeTooHigh.selector, 5001));
        new Settlement(token, PROTOCOL, 5001, 1);
        vm.expectRevert(abi.encodeWithSelector(Settlement.DelayTooLong.selector, 31 days));
        new Settlement(token, PROTOCOL, 1, 31 days);
        assertEq(settlement.protocolFeeBps(), FEE_BPS, "bps");
        assertEq(settlement.withdrawalDelay(), DELAY, "delay");
        assertEq(address(settlement.token()), address(token), "token");
    }

    // ---- deposits and withdrawals ----------------------------------------------------------------------------

    function test_deposit() public {
        assertEq(settlement.balanceOf(alice, NODE), 1_000_000, "deposited");
        token.mint(address(this), 10);
        token.approve(address(settlement), 10);
        vm.expectEmit();
        emit Settlement.Deposited(address(this), NODE, address(this), 10);
        settlement.deposit(NODE, 10);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        settlement.deposit(NODE, 0);
    }

    function test_depositFor() public {
        token.mint(address(this), 10);
        token.approve(address(settlement), 10);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        settlement.depositFor(address(0), NODE, 10);
        vm.expectRevert(Settlement.ZeroAddress.selector);
        settlement.depositFor(R1, address(0), 10);
        settlement.depositFor(R1, NODE, 10);
        assertEq(settlement.balanceOf(R1, NODE), 10, "credited to requester");
    }

    function test_deposit_laneOverflowRejected() public {
        uint256 big = uint256(type(uint128).max);
        token.mint(address(this), big);
        token.approve(address(settlement), big);
        vm.expectRevert(abi.encodeWithSelector(Settlement.AmountTooLarge.selector, big + 1_000_000));
        settlement.depositFor(alice, NODE, big);
    }

    function test_depositWithPermit() public {
        uint256 pk = 0xC0FFEE;
        address who = vm.addr(pk);
        token.mint(who, 500);
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                who,
                address(settlement),
                500,
                0,
                block.timestamp
            )
        );
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(pk, keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash)));
        token.permit(who, address(settlement), 500, block.timestamp, v, r, s); // front-run: permit already used
        vm.prank(who);
        settlement.depositWithPermit(NODE, 500, block.timestamp, v, r, s);
        assertEq(settlement.balanceOf(who, NODE), 500, "deposited with permit");
    }

    function test_withdrawal_flow() public {
        vm.startPrank(alice);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        settlement.requestWithdrawal(NODE, 0);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientBalance.selector, alice, 2_000_000, 1_000_000));
        settlement.requestWithdrawal(NODE, 2_000_000);
        vm.expectRevert(Settlement.NoPendingWithdrawal.selector);
        settlement.withdraw(NODE);
        vm.expectEmit();
        emit Settlement.WithdrawalRequested(alice, NODE, 400_000, block.timestamp + DELAY);
        settlement.requestWithdrawal(NODE, 400_000);
        vm.expectRevert(abi.encodeWithSelector(Settlement.WithdrawalLocked.selector, block.timestamp + DELAY));
        settlement.withdraw(NODE);
        vm.warp(block.timestamp + DELAY);
        vm.expectEmit();
        emit Settlement.Withdrawn(alice, NODE, 400_000);
        assertEq(settlement.withdraw(NODE), 400_000, "withdrawn");
        vm.stopPrank();
        assertEq(token.balanceOf(alice), 400_000, "tokens back");
        assertEq(settlement.balanceOf(alice, NODE), 600_000, "rest");
    }

    function test_withdrawal_cannotOutrunSettlement() public {
        vm.prank(alice);
        settlement.requestWithdrawal(NODE, 1_000_000);
        _settleSimple(keccak256("r"), 300_000); // a settlement during the delay still debits
        vm.warp(block.timestamp + DELAY);
        vm.prank(alice);
        assertEq(settlement.withdraw(NODE), 700_000, "pays what is left");
        assertEq(settlement.balanceOf(alice, NODE), 0, "empty");
    }

    function test_cancelWithdrawal() public {
        vm.startPrank(alice);
        vm.expectRevert(Settlement.NoPendingWithdrawal.selector);
        settlement.cancelWithdrawal(NODE);
        settlement.requestWithdrawal(NODE, 1);
        vm.expectEmit();
        emit Settlement.WithdrawalCancelled(alice, NODE);
        settlement.cancelWithdrawal(NODE);
        (uint128 amount,) = settlement.pendingWithdrawal(alice, NODE);
        assertEq(amount, 0, "cancelled");
        vm.stopPrank();
    }

    // ---- settlement ------------------------------------------------------------------------------------------

    function test_settle_happyPath() public {
        bytes32[] memory words = _credits(10_000, _addrs(R1, R2));
        Settlement.Debit[] memory ds = new Settlement.Debit[](2);
        ds[0] = _debit(PK_A, NODE, 6_000, 6_000);
        ds[1] = _debit(PK_B, NODE, 50_000, 4_000);
        bytes32 expectedId = keccak256(abi.encode(NODE, keccak256("receipts")));
        bytes32 root = settlement.creditsRoot(words);
        vm.prank(NODE);
        vm.expectEmit();
        emit Settlement.BatchSettled(expectedId, NODE, keccak256("receipts"), root, 10_000, 250, 1, "ipfs://bafyreceipts");
        bytes32 id = settlement.settleBatch(_header(keccak256("receipts")), ds, words);
        assertEq(id, expectedId, "batch id");
        assertEq(settlement.balanceOf(alice, NODE), 994_000, "alice debited");
        assertEq(settlement.balanceOf(bob, NODE), 996_000, "bob debited");
        assertEq(settlement.debited(alice, NODE), 6_000, "alice cumulative");
        assertEq(settlement.debited(bob, NODE), 4_000, "bob cumulative");
        assertEq(settlement.creditsRootOf(id), settlement.creditsRoot(words), "root stored");
    }

    function test_settle_replayRejected() public {
        (bytes32 id,) = _settleSimple(keccak256("r"), 100);
        bytes32[] memory words = _credits(100, _addrs(R1, R2));
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, 200, 100));
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BatchAlreadySettled.selector, id));
        settlement.settleBatch(_header(keccak256("r")), ds, words);
    }

    function test_settle_voucherCap() public {
        _settleSimple(keccak256("r1"), 100); // voucher cap 100 used up
        bytes32[] memory words = _credits(1, _addrs(R1, R2));
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, 100, 1)); // replaying the old voucher
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.VoucherCapExceeded.selector, alice, 101, 100));
        settlement.settleBatch(_header(keccak256("r2")), ds, words);
        ds = _one(_debit(PK_A, NODE, 101, 1)); // a newer voucher covers it
        vm.prank(NODE);
        settlement.settleBatch(_header(keccak256("r2")), ds, words);
        assertEq(settlement.debited(alice, NODE), 101, "cumulative");
    }

    function test_settle_badSignatures() public {
        bytes32[] memory words = _credits(100, _addrs(R1, R2));
        Settlement.Debit memory d = _debit(PK_B, NODE, 100, 100);
        d.requester = alice; // signed by bob, claimed as alice
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BadVoucherSignature.selector, alice));
        settlement.settleBatch(_header(keccak256("r")), _one(d), words);
        d = _debit(PK_A, address(0xBAD), 100, 100); // voucher for another node
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BadVoucherSignature.selector, alice));
        settlement.settleBatch(_header(keccak256("r")), _one(d), words);
        d = _debit(PK_A, NODE, 100, 100);
        d.cumulativeCap = 1000; // cap changed after signing
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BadVoucherSignature.selector, alice));
        settlement.settleBatch(_header(keccak256("r")), _one(d), words);
        d = _debit(PK_A, NODE, 100, 100);
        d.r = bytes32(0); // not a signature at all
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.BadVoucherSignature.selector, alice));
        settlement.settleBatch(_header(keccak256("r")), _one(d), words);
    }

    function test_settle_emptyAndZero() public {
        bytes32[] memory words = _credits(100, _addrs(R1, R2));
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, 100, 100));
        Settlement.BatchHeader memory h = _header(keccak256("r"));
        h.receiptCount = 0;
        vm.startPrank(NODE);
        vm.expectRevert(Settlement.EmptyBatch.selector);
        settlement.settleBatch(h, ds, words);
        vm.expectRevert(Settlement.EmptyBatch.selector);
        settlement.settleBatch(_header(keccak256("r")), new Settlement.Debit[](0), words);
        vm.expectRevert(Settlement.EmptyBatch.selector);
        settlement.settleBatch(_header(keccak256("r")), ds, new bytes32[](0));
        vm.stopPrank();
        ds = _one(_debit(PK_A, NODE, 100, 0));
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.ZeroDebit.selector, 0));
        settlement.settleBatch(_header(keccak256("r")), ds, words);
    }

    function test_settle_insufficientBalance() public {
        uint256 big = 2_000_000;
        bytes32[] memory words = _credits(big, _addrs(R1, R2));
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, big, big));
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientBalance.selector, alice, big, 1_000_000));
        settlement.settleBatch(_header(keccak256("r")), ds, words);
    }

    function test_settle_creditChecks() public {
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, 1000, 1000)); // fee 25, rest 975
        bytes32[] memory w = new bytes32[](3);
        w[0] = Credits.word(PROTOCOL, 25);
        w[1] = Credits.word(R2, 500);
        w[2] = Credits.word(R1, 475); // out of order
        vm.startPrank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.CreditsNotSorted.selector, 2));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[1] = Credits.word(R1, 500);
        w[2] = Credits.word(R1, 475); // duplicate recipient
        vm.expectRevert(abi.encodeWithSelector(Settlement.CreditsNotSorted.selector, 2));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[0] = Credits.word(address(0), 25); // zero address
        vm.expectRevert(abi.encodeWithSelector(Settlement.CreditsNotSorted.selector, 0));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[0] = Credits.word(PROTOCOL, 25);
        w[1] = Credits.word(R1, 0);
        w[2] = Credits.word(R2, 975);
        vm.expectRevert(abi.encodeWithSelector(Settlement.ZeroCredit.selector, 1));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[0] = Credits.word(PROTOCOL, 24); // protocol shorted by 1 wei, given to R2
        w[1] = Credits.word(R1, 500);
        w[2] = Credits.word(R2, 476);
        vm.expectRevert(abi.encodeWithSelector(Settlement.ProtocolFeeMismatch.selector, 25, 24));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        bytes32[] memory noFee = new bytes32[](2);
        noFee[0] = Credits.word(R1, 500);
        noFee[1] = Credits.word(R2, 500);
        vm.expectRevert(abi.encodeWithSelector(Settlement.ProtocolFeeMismatch.selector, 25, 0));
        settlement.settleBatch(_header(keccak256("r")), ds, noFee);
        w[0] = Credits.word(PROTOCOL, 25);
        w[1] = Credits.word(R1, 500);
        w[2] = Credits.word(R2, 476); // one wei created
        vm.expectRevert(abi.encodeWithSelector(Settlement.CreditsMismatch.selector, 1001, 1000));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[2] = Credits.word(R2, 474); // one wei lost
        vm.expectRevert(abi.encodeWithSelector(Settlement.CreditsMismatch.selector, 999, 1000));
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[2] = Credits.word(R2, 475);
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        vm.stopPrank();
    }

    function test_settle_zeroFeeNeedsNoProtocolCredit() public {
        // 39 * 250 / 10000 = 0: no protocol credit expected, and a protocol credit would be a mismatch.
        bytes32[] memory w = new bytes32[](1);
        w[0] = Credits.word(R1, 39);
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, 39, 39));
        vm.prank(NODE);
        settlement.settleBatch(_header(keccak256("r")), ds, w);
        w[0] = Credits.word(PROTOCOL, 39);
        ds = _one(_debit(PK_A, NODE, 78, 39));
        vm.prank(NODE);
        vm.expectRevert(abi.encodeWithSelector(Settlement.ProtocolFeeMismatch.selector, 0, 39));
        settlement.settleBatch(_header(keccak256("r2")), ds, w);
    }

    // ---- claims ----------------------------------------------------------------------------------------------

    function test_claim() public {
        (bytes32 id, bytes32[] memory words) = _settleSimple(keccak256("r"), 1000);
        for (uint256 i; i < words.length; ++i) {
            address who = address(uint160(uint256(words[i]) >> 96));
            uint96 amount = uint96(uint256(words[i]));
            bytes32[] memory proof = Credits.proof(words, i);
            vm.expectRevert(Settlement.InvalidProof.selector);
            settlement.claim(id, who, amount + 1, proof);
            vm.expectEmit();
            emit Settlement.Claimed(id, who, amount);
            settlement.claim(id, who, amount, proof);
            assertEq(token.balanceOf(who), amount, "paid");
            assertTrue(settlement.claimed(id, who), "marked");
            vm.expectRevert(abi.encodeWithSelector(Settlement.AlreadyClaimed.selector, id, who));
            settlement.claim(id, who, amount, proof);
        }
        assertEq(token.balanceOf(address(settlement)), 2_000_000 - 1000, "all credits paid out");
        vm.expectRevert(abi.encodeWithSelector(Settlement.UnknownBatch.selector, bytes32(0)));
        settlement.claim(bytes32(0), R1, 1, new bytes32[](0));
    }

    function test_claimMany() public {
        (bytes32 id1, bytes32[] memory w1) = _settleSimple(keccak256("r1"), 1000);
        bytes32[] memory w2 = _credits(2000, _addrs(R1, R2));
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, 3000, 2000));
        vm.prank(NODE);
        bytes32 id2 = settlement.settleBatch(_header(keccak256("r2")), ds, w2);
        // R1 is at index 0 in both (R1 < R2 < PROTOCOL? PROTOCOL = 0xFEE sorts first) -> find it.
        Settlement.ClaimItem[] memory items = new Settlement.ClaimItem[](2);
        items[0] = _item(id1, w1, R1);
        items[1] = _item(id2, w2, R1);
        uint256 total = settlement.claimMany(R1, items);
        assertEq(total, items[0].amount + items[1].amount, "sum");
        assertEq(token.balanceOf(R1), total, "paid once");
        vm.expectRevert(Settlement.ZeroAmount.selector);
        settlement.claimMany(R1, new Settlement.ClaimItem[](0));
    }

    function _item(bytes32 id, bytes32[] memory words, address who) internal pure returns (Settlement.ClaimItem memory) {
        for (uint256 i; i < words.length; ++i) {
            if (address(uint160(uint256(words[i]) >> 96)) == who) {
                return Settlement.ClaimItem(id, uint96(uint256(words[i])), Credits.proof(words, i));
            }
        }
        revert("not found");
    }

    // ---- views -----------------------------------------------------------------------------------------------

    function test_verifyRequest() public view {
        Settlement.Request memory q = Settlement.Request({
            requester: alice,
            node: NODE,
            adapter: keccak256("bafyadapter"),
            promptHash: keccak256("prompt"),
            maxTokens: 64,
            maxPrice: 1000,
            nonce: 1,
            deadline: 2_000_000_000
        });
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(PK_A, settlement.requestDigest(q));
        assertTrue(settlement.verifyRequest(q, abi.encodePacked(r, s, v)), "65-byte signature");
        (bytes32 cr, bytes32 vs) = _signCompact(PK_A, settlement.requestDigest(q));
        assertTrue(settlement.verifyRequest(q, abi.encodePacked(cr, vs)), "compact signature");
        q.maxPrice = 1001;
        assertFalse(settlement.verifyRequest(q, abi.encodePacked(r, s, v)), "tampered request");
        assertFalse(settlement.verifyRequest(q, hex"00"), "garbage signature");
    }

    function test_creditHelpers() public view {
        assertEq(settlement.creditWord(R1, 5), Credits.word(R1, 5), "word");
        assertEq(settlement.creditLeaf(R1, 5), keccak256(abi.encodePacked(Credits.word(R1, 5))), "leaf");
        bytes32[] memory one = new bytes32[](1);
        one[0] = Credits.word(R1, 5);
        assertEq(settlement.creditsRoot(one), settlement.creditLeaf(R1, 5), "single-leaf root");
        assertTrue(settlement.domainSeparator() != bytes32(0), "domain");
    }

    // ---- fuzz ------------------------------------------------------------------------------------------------

    /// Any total, any number of recipients, arbitrary weights: exact split settles, every claim pays, the sum of
    /// claims equals the debits exactly; one wei more or less is rejected.
    function testFuzz_split(uint96 total, uint8 nSeed, uint256 weightSeed) public {
        uint256 amount = bound(total, 1, 1_000_000);
        uint256 n = bound(nSeed, 1, 12);
        uint256 fee = amount * FEE_BPS / 10_000;
        uint256 rest = amount - fee;
        // weights from the seed; floor shares, remainder to recipient 0 (the "operator")
        uint256[] memory w = new uint256[](n);
        uint256 wsum;
        for (uint256 i; i < n; ++i) {
            w[i] = uint256(keccak256(abi.encode(weightSeed, i))) % 1000 + 1;
            wsum += w[i];
        }
        bytes32[] memory tmp = new bytes32[](n + 1);
        uint256 k;
        uint256 given;
        for (uint256 i = 1; i < n; ++i) {
            uint256 share = rest * w[i] / wsum;
            given += share;
            if (share > 0) tmp[k++] = Credits.word(address(uint160(0x5000 + i)), share);
        }
        if (rest - given > 0) tmp[k++] = Credits.word(address(uint160(0x5000)), rest - given);
        if (fee > 0) tmp[k++] = Credits.word(PROTOCOL, fee);
        bytes32[] memory words = new bytes32[](k);
        for (uint256 i; i < k; ++i) {
            words[i] = tmp[i];
        }
        Credits.sort(words);
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, amount, amount));
        if (k > 1) {
            // one wei moved off the first credit onto nowhere: rejected
            bytes32[] memory bad = new bytes32[](k);
            for (uint256 i; i < k; ++i) {
                bad[i] = words[i];
            }
            bad[k - 1] = bytes32(uint256(bad[k - 1]) + 1);
            vm.prank(NODE);
            vm.expectRevert();
            settlement.settleBatch(_header(keccak256("f")), ds, bad);
        }
        vm.prank(NODE);
        bytes32 id = settlement.settleBatch(_header(keccak256("f")), ds, words);
        uint256 before = token.balanceOf(address(settlement));
        uint256 paid;
        for (uint256 i; i < k; ++i) {
            address who = address(uint160(uint256(words[i]) >> 96));
            uint96 a = uint96(uint256(words[i]));
            settlement.claim(id, who, a, Credits.proof(words, i));
            paid += a;
        }
        assertEq(paid, amount, "claims == debits");
        assertEq(before - token.balanceOf(address(settlement)), amount, "tokens out == debits");
    }

    /// Two debits under one cap: the second goes through iff the cumulative stays within the signed cap.
    function testFuzz_voucher(uint256 capSeed, uint256 aSeed, uint256 bSeed) public {
        uint256 cap = bound(capSeed, 1, 500_000);
        uint256 a = bound(aSeed, 1, 600_000);
        uint256 b = bound(bSeed, 1, 600_000);
        address[] memory rs = _addrs(R1, R2);
        Settlement.Debit[] memory ds = _one(_debit(PK_A, NODE, cap, a));
        vm.prank(NODE);
        if (a > cap) vm.expectRevert(abi.encodeWithSelector(Settlement.VoucherCapExceeded.selector, alice, a, cap));
        settlement.settleBatch(_header(keccak256("1")), ds, _credits(a, rs));
        uint256 done = a > cap ? 0 : a;
        ds = _one(_debit(PK_A, NODE, cap, b));
        vm.prank(NODE);
        if (done + b > cap) {
            vm.expectRevert(abi.encodeWithSelector(Settlement.VoucherCapExceeded.selector, alice, done + b, cap));
        }
        settlement.settleBatch(_header(keccak256("2")), ds, _credits(b, rs));
        uint256 expected = done + b > cap ? done : done + b;
        assertEq(settlement.debited(alice, NODE), expected, "cumulative debited");
        assertLe(settlement.debited(alice, NODE), cap, "never beyond the cap");
        assertEq(settlement.balanceOf(alice, NODE), 1_000_000 - expected, "balance");
    }
}
