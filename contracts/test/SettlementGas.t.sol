// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {SettlementFixture} from "./utils/SettlementFixture.sol";
import {Credits} from "./utils/Credits.sol";
import {Settlement} from "../src/Settlement.sol";

/// The benchmark of the issue: one batch of 256 receipts from 10 requesters to 50 recipients (+ the protocol).
contract SettlementGasTest is SettlementFixture {
    uint256 constant REQUESTERS = 10;
    uint256 constant RECIPIENTS = 50;
    uint256 constant RECEIPTS = 256;

    function setUp() public {
        _deploy();
        for (uint256 i; i < REQUESTERS; ++i) {
            _fund(0x1000 + i, 1e24);
        }
    }

    function _batch(uint256 round) internal view returns (Settlement.Debit[] memory ds, bytes32[] memory words) {
        ds = new Settlement.Debit[](REQUESTERS);
        uint256 total;
        for (uint256 i; i < REQUESTERS; ++i) {
            // requester i paid for its ~25.6 receipts; amounts differ per requester
            uint256 amount = (RECEIPTS / REQUESTERS) * 1e15 + i * 7919;
            ds[i] = _debit(0x1000 + i, NODE, 1e22 * round, amount);
            total += amount;
        }
        uint256 fee = total * FEE_BPS / 10_000;
        uint256 rest = total - fee;
        words = new bytes32[](RECIPIENTS + 1);
        uint256 each = rest / RECIPIENTS;
        for (uint256 i; i < RECIPIENTS; ++i) {
            uint256 amount = i == 0 ? rest - each * (RECIPIENTS - 1) : each; // remainder to the "operator"
            words[i] = Credits.word(address(uint160(uint256(keccak256(abi.encode("recipient", i))))), amount);
        }
        words[RECIPIENTS] = Credits.word(PROTOCOL, fee);
        Credits.sort(words);
    }

    /// `forge test --match-contract SettlementGasTest --gas-report` prints settleBatch's gas as whole transactions
    /// (intrinsic + calldata + cold storage): that is the figure in docs/benchmarks.md, checked by
    /// tests/contracts/test_forge.py. The log below is execution gas inside this test's transaction only.
    function test_gas_batch256() public {
        for (uint256 round = 1; round <= 2; ++round) {
            Settlement.BatchHeader memory h =
                Settlement.BatchHeader(keccak256(abi.encode("batch", round)), RECEIPTS, "ipfs://bafy-batch");
            (Settlement.Debit[] memory ds, bytes32[] memory words) = _batch(round);
            vm.prank(NODE);
            uint256 g = gasleft();
            settlement.settleBatch(h, ds, words);
            emit log_named_uint("execution gas (in-test, not a full transaction)", g - gasleft());
        }
        assertEq(settlement.debited(vm.addr(0x1000), NODE), 2 * (RECEIPTS / REQUESTERS) * 1e15, "two batches debited");
    }
}
